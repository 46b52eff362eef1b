"""benchmarks.drift_streams: river's drift streams as dataset files, scored prequentially."""

from __future__ import annotations

import json

import pytest

from benchmarks import drift_streams as ds
from dataset.config import load_config
from transforms.validation import validate_payload

pytest.importorskip("river")


@pytest.mark.parametrize("name", sorted(ds.STREAMS))
def test_each_stream_is_a_file_and_a_config_that_loads(tmp_path, name):
    spec = ds.STREAMS[name]
    data, config_path = ds.write_stream(spec, 300, 7, str(tmp_path / "d"), str(tmp_path / "c"))
    config = load_config(config_path)
    assert config.key_field == ds.KEY_FIELD and config.event_time_field == ds.TIME_FIELD
    rows = ds.read_rows(data)
    assert len(rows) == 300
    for i, row in enumerate(rows):  # every row passes the pipeline's validation
        record = validate_payload(row, config, f"m{i}")
        assert record["label"] in (0, 1)
    times = [validate_payload(r, config, "m")["event_time"] for r in rows]
    assert times == sorted(times) and len(set(times)) == 300
    assert len({r[ds.KEY_FIELD] for r in rows}) == ds.N_SOURCES
    # Deterministic by seed.
    again = list(ds.stream_rows(spec, 300, 7))
    assert [json.loads(json.dumps(r)) for r in again] == rows


def test_the_sea_concept_changes_at_the_drift_point():
    rows = list(ds.stream_rows(ds.STREAMS["sea"], 4000, 7))

    def agreement(part, threshold):  # SEA: label = x0 + x1 > threshold (0: 8, 2: 7)
        return sum((r["x0"] + r["x1"] > threshold) == bool(r["label"]) for r in part) / len(part)

    before, after = rows[:1800], rows[2200:]
    assert agreement(before, 8) > agreement(before, 7) + 0.04
    assert agreement(after, 7) > agreement(after, 8) + 0.04


class _Recorder:
    """A stand-in learner: predicts the label it saw last, records call order."""

    def __init__(self):
        self.calls = []
        self.last = 0

    def predict_one(self, x):
        self.calls.append(("predict", x["x0"]))
        return self.last

    def learn_one(self, x, y):
        self.calls.append(("learn", x["x0"]))
        self.last = y


def test_prequential_predicts_each_row_before_learning_it():
    rows = [{"x0": i, ds.LABEL_FIELD: i % 2, ds.KEY_FIELD: "a"} for i in range(6)]
    model = _Recorder()
    hits, _ = ds.prequential(model, rows, ["x0"])
    assert model.calls == [(k, i) for i in range(6) for k in ("predict", "learn")]
    assert hits == [True] + [False] * 5  # alternating labels: "last label" is always wrong
    assert ds.baselines(rows)["no_change"] == hits
