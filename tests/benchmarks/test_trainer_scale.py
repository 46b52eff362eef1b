"""benchmarks.trainer_scale: the generated history and the per-size inputs."""

from __future__ import annotations

import json

from benchmarks import trainer_scale
from dataset.config import load_config
from trainer.data import event_seconds


def test_history_is_one_continuous_window_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_scale, "CHUNK", 200)  # two chunks of 125
    path = tmp_path / "history.jsonl"
    assert trainer_scale.write_history(path, 250) == 250
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    times = [event_seconds(r) for r in rows]
    assert len(rows) == 250 and times == sorted(times)
    assert len({r["example_id"] for r in rows}) == 250
    assert max(times) < trainer_scale.END_TIME
    gaps = {round(b - a, 3) for a, b in zip(times, times[1:], strict=False)}
    assert gaps == {round(1 / trainer_scale.RATE, 3)}  # no hole or overlap between chunks

    newest = tmp_path / "newest.jsonl"
    trainer_scale.tail_file(path, newest, 40)
    assert newest.read_text().splitlines() == path.read_text().splitlines()[-40:]


def test_config_copy_sets_the_window_size(tmp_path):
    config = load_config(str(trainer_scale.config_copy(tmp_path, 12345)))
    assert config.retraining.training_window_rows == 12345
    assert config.name == "traffic"
