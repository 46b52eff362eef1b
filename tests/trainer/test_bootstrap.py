"""Tests of the bootstrap trainer (trainer/bootstrap.py) and the shared metrics."""

from __future__ import annotations

import io
import json
import random
from contextlib import redirect_stdout

import numpy as np
import pytest

from dataset.config import load_config
from model.registry import ModelRegistry
from simulator.messages import event_time_of
from trainer.bootstrap import generate_history, main, split_by_time
from trainer.metrics import evaluate, metrics_from_predictions, roc_auc

TRAFFIC = load_config("configs/traffic.yaml")
# 1_700_000_400 is a multiple of 600 (simulated midnight with day_seconds=600);
# +450 s is 18:00, so 3000 readings at 10/s cover 06:00-18:00 and the held-out
# last 20% is the busy evening, where predicting congestion is not trivial.
END_TIME = 1_700_000_850.0


def _run(capsys, *args: str) -> tuple[int, list[str], str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err


@pytest.fixture(scope="module")
def bootstrapped(tmp_path_factory):
    """One small bootstrap run shared by several tests: (registry root, stdout lines)."""
    root = str(tmp_path_factory.mktemp("registry"))
    args = ["--config", "configs/traffic.yaml", "--registry", root, "--events", "3000"]
    buf = io.StringIO()
    with redirect_stdout(buf):
        code = main([*args, "--end-time", str(END_TIME)])
    assert code == 0
    return root, buf.getvalue().splitlines()


def test_bootstrap_publishes_a_promoted_version_that_beats_the_base_rate(bootstrapped):
    root, lines = bootstrapped
    assert any(line.startswith("[bootstrap] training") for line in lines)
    result = json.loads(lines[-1])
    assert result["promoted"] is True
    metrics = result["metrics"]
    assert metrics["accuracy"] > metrics["baseline_accuracy"]
    assert metrics["log_loss"] < metrics["baseline_log_loss"]
    assert 0.0 < metrics["base_rate"] < 1.0

    registry = ModelRegistry(root)
    assert registry.current_version() == result["version"]
    info = registry.current()
    assert info.status == "promoted"
    meta = info.metadata
    assert meta["source"] == "simulated-history" and meta["dataset"] == "traffic"
    assert meta["training_data"]["rows"] == 2400
    assert meta["validation_data"]["rows"] == 600
    assert meta["training_data"]["end"] < meta["validation_data"]["start"]  # no leakage
    assert meta["metrics"] == metrics
    assert meta["simulator"]["drift"] is False
    assert [e["action"] for e in registry.history()] == ["promote"]


def test_if_empty_does_nothing_when_a_version_is_current(bootstrapped, capsys):
    root, _ = bootstrapped
    before = [v.version for v in ModelRegistry(root).versions()]
    code, lines, _ = _run(
        capsys, "--config", "configs/traffic.yaml", "--registry", root, "--if-empty"
    )
    assert code == 0
    assert "nothing to do" in lines[0]
    assert json.loads(lines[-1])["skipped"] is True
    assert [v.version for v in ModelRegistry(root).versions()] == before


def test_no_promote_with_drift_adds_a_candidate_only(tmp_path, capsys):
    registry = ModelRegistry(str(tmp_path))
    common = ["--config", "configs/traffic.yaml", "--registry", str(tmp_path)]
    common += ["--events", "1000", "--end-time", str(END_TIME), "--epochs", "2"]
    code, lines, _ = _run(capsys, *common, "--if-empty")
    first = json.loads(lines[-1])["version"]
    assert code == 0 and registry.current_version() == first  # empty: it trained

    code, lines, _ = _run(capsys, *common, "--seed", "8", "--drift", "--no-promote")
    assert code == 0
    result = json.loads(lines[-1])
    assert result["promoted"] is False
    assert registry.current_version() == first
    info = registry.get(result["version"])
    assert info.status == "candidate"
    assert info.metadata["simulator"] == {**info.metadata["simulator"], "seed": 8, "drift": True}
    assert any("promote " + result["version"] in line for line in lines)


def test_drift_makes_all_history_post_drift():
    plain, _ = generate_history(TRAFFIC, 3000, END_TIME)
    drifted, _ = generate_history(TRAFFIC, 3000, END_TIME, drift=True)
    assert [r["occupancy"] for r in plain] == [r["occupancy"] for r in drifted]  # same features
    base_plain = np.mean([r["congested"] for r in plain])
    base_drifted = np.mean([r["congested"] for r in drifted])
    assert base_drifted > base_plain + 0.1  # the lower threshold labels more congestion


def test_split_by_time_holds_out_the_latest_fifth():
    rows, times = generate_history(TRAFFIC, 1000, END_TIME)
    pairs = list(zip(rows, times, strict=True))
    random.Random(1).shuffle(pairs)
    shuffled_rows = [r for r, _ in pairs]
    earlier, later, cutoff = split_by_time(shuffled_rows, [t for _, t in pairs], 0.2)
    assert (len(earlier), len(later)) == (800, 200)
    assert max(event_time_of(r, TRAFFIC) for r in earlier) < cutoff
    assert min(event_time_of(r, TRAFFIC) for r in later) == cutoff
    with pytest.raises(ValueError, match="one event time"):
        split_by_time(rows[:5], [1.0] * 5, 0.2)


def test_other_datasets_are_refused(tmp_path, capsys):
    code, _, err = _run(
        capsys, "--config", "configs/ad_conversions.yaml", "--registry", str(tmp_path)
    )
    assert code == 2
    assert err.startswith("error: ") and "supports only: traffic" in err
    assert ModelRegistry(str(tmp_path)).versions() == []


def test_too_few_events_is_an_error(tmp_path, capsys):
    code, _, err = _run(
        capsys, "--config", "configs/traffic.yaml", "--registry", str(tmp_path), "--events", "10"
    )
    assert code == 2 and "--events must be at least" in err


# ------------------------------------------------------------- metrics


def test_classification_metrics():
    y = np.array([0, 0, 1, 1], dtype=np.float32)
    p = np.array([0.1, 0.6, 0.8, 0.9], dtype=np.float32)
    m = metrics_from_predictions(y, p, "binary_classification")
    assert m["rows"] == 4
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["auc"] == pytest.approx(1.0)
    assert m["base_rate"] == pytest.approx(0.5)
    assert m["mean_prediction"] == pytest.approx(0.6)
    assert m["baseline_accuracy"] == pytest.approx(0.5)
    assert m["baseline_log_loss"] == pytest.approx(np.log(2))
    expected = -np.mean(np.log([0.9, 0.4, 0.8, 0.9]))
    assert m["log_loss"] == pytest.approx(expected, rel=1e-5)
    json.dumps(m)  # plain Python values


def test_auc_handles_ties_and_one_class():
    assert roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    assert roc_auc(np.array([1, 0]), np.array([0.2, 0.8])) == pytest.approx(0.0)
    assert roc_auc(np.array([1, 1]), np.array([0.2, 0.8])) is None


def test_regression_metrics_and_errors():
    y = np.array([1.0, 2.0, 3.0])
    m = metrics_from_predictions(y, np.array([[1.0], [2.0], [5.0]]), "regression")
    assert m["mae"] == pytest.approx(2 / 3)
    assert m["rmse"] == pytest.approx(np.sqrt(4 / 3))
    assert m["baseline_mae"] == pytest.approx(2 / 3)
    assert m["mean_label"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="unknown task"):
        metrics_from_predictions(y, y, "ranking")
    with pytest.raises(ValueError, match="zero rows"):
        metrics_from_predictions(y[:0], y[:0], "regression")
    with pytest.raises(ValueError, match="NaN"):
        metrics_from_predictions(y, np.array([1.0, np.nan, 2.0]), "regression")


def test_evaluate_uses_the_model_predictions():
    class Constant:
        def predict(self, x, **kwargs):
            return np.full((len(x), 1), 0.25, dtype=np.float32)

    x = np.zeros((4, 3), dtype=np.float32)
    m = evaluate(Constant(), x, np.array([0, 0, 0, 1]), "binary_classification")
    assert m["accuracy"] == pytest.approx(0.75) and m["mean_prediction"] == pytest.approx(0.25)
