"""trainer.worker: the warm trainer's job protocol and warm-up (the backend side is in
tests/trainer/backends/test_local.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from trainer.worker import parse_job, serve_one, warm_up


def test_a_job_is_argv_and_a_log_path():
    job = parse_job('{"argv": ["--run-id", "r"], "log_path": "/tmp/r.log"}\n')
    assert job == {"argv": ["--run-id", "r"], "log_path": "/tmp/r.log"}
    for bad in ('["--run-id"]', '{"argv": "--run-id r", "log_path": "x"}', '{"argv": [1]}'):
        with pytest.raises(ValueError, match="argv"):
            parse_job(bad)


def test_no_job_when_stdin_closes(capsys):
    assert serve_one(io.StringIO("")) == 0
    assert "no job" in capsys.readouterr().out


def test_warm_up_leaves_the_runs_model_as_a_cold_process_builds_it(tmp_path):
    from pathlib import Path

    from dataset.config import load_config
    from model.keras_model import STANDARDIZE_LAYER, build_model

    # A count without min/max: the model gets a standardizing layer, which warm-up adapts.
    text = Path("configs/traffic.yaml").read_text()
    text = text.replace(
        "vehicle_count: {type: int, min: 0, max: 400,", "vehicle_count: {type: int,"
    )
    path = tmp_path / "unscaled.yaml"
    path.write_text(text)
    config = load_config(str(path))
    before = [w.copy() for w in build_model(config, seed=3).get_weights()]
    warm_up(str(path))
    after = build_model(config, seed=3)
    assert STANDARDIZE_LAYER in [layer.name for layer in after.layers]
    assert len(after.get_weights()) == len(before)
    for a, b in zip(after.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)
    assert [layer.name for layer in after.layers][-1] == "prediction"


def test_a_waiting_job_cuts_the_warm_up_short():
    asked = []

    def stop() -> bool:
        asked.append(True)
        return len(asked) > 1  # a job arrived during the first step

    assert warm_up("configs/traffic.yaml", stop=stop) == 1


def test_job_waiting_sees_a_line_on_a_pipe():
    import os

    from trainer.worker import job_waiting

    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd) as reader, os.fdopen(write_fd, "w") as writer:
        assert not job_waiting(reader)
        writer.write('{"argv": [], "log_path": "x"}\n')
        writer.flush()
        assert job_waiting(reader)
    assert not job_waiting(io.StringIO("no file descriptor"))
