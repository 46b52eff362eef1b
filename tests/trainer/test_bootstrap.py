"""trainer.bootstrap: the first model comes from the same trainer, validation and gates."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

import numpy as np
import pytest
import yaml

from dataset.config import load_config
from dataset.tables import training_schema
from dataset.times import event_seconds
from model.registry import ModelRegistry
from trainer.bootstrap import generate_history, main, training_rows
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


def _config(tmp_path, **retraining) -> str:
    """A copy of the traffic config with other retraining settings."""
    raw = yaml.safe_load(open("configs/traffic.yaml"))
    raw["retraining"].update(retraining)
    path = tmp_path / "traffic.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.fixture(scope="module")
def bootstrapped(tmp_path_factory):
    """One small bootstrap run shared by several tests: (registry root, stdout lines)."""
    root = str(tmp_path_factory.mktemp("registry"))
    args = ["--config", "configs/traffic.yaml", "--registry", root, "--events", "3000"]
    buf = io.StringIO()
    with redirect_stdout(buf):
        code = main([*args, "--end-time", str(END_TIME)])
    assert code == 0, buf.getvalue()[-3000:]
    return root, buf.getvalue().splitlines()


def test_first_model_is_one_trainer_run_through_validation_and_gates(bootstrapped):
    root, lines = bootstrapped
    result = json.loads(lines[-1])
    assert result["status"] == "succeeded" and result["promoted"] is True
    assert result["run_id"].startswith("bootstrap-")
    assert result["run_log"] == ["running", "succeeded"]  # the trainer's own status rows
    # The trainer's steps ran: data validation, training, both gates.
    text = "\n".join(lines)
    assert "[trainer] data validation passed" in text
    assert "[trainer] infra gate: pass" in text
    assert "[trainer] quality gate: pass" in text and "comparison skipped" in text
    metrics = result["metrics"]
    assert metrics["accuracy"] >= TRAFFIC.retraining.min_accuracy
    assert metrics["log_loss"] < metrics["baseline_log_loss"]

    registry = ModelRegistry(root)
    assert registry.current_version() == result["version"]
    info = registry.current()
    assert info.status == "promoted"
    meta = info.metadata
    assert meta["trainer"] == "trainer.task" and meta["trigger_id"] == "bootstrap"
    assert meta["run_id"] == result["run_id"] and meta["parent_version"] is None
    assert meta["source"] == "simulated-history" and meta["simulator"]["drift"] is False
    assert meta["data_validation"]["ok"] is True
    assert meta["statistics"]["rows"] == 3000 and "reference" in meta["statistics"]
    data = meta["training_data"]
    assert data["rows"] == 3000 and data["rows_train"] + data["rows_validation"] == 3000
    assert data["train_end"] < meta["validation_data"]["start"]  # no leakage
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


def test_the_first_candidate_is_gated_like_any_other(tmp_path, capsys):
    """A floor no model reaches: the quality gate rejects it, nothing becomes current."""
    config = _config(tmp_path, min_accuracy=0.999)
    root = str(tmp_path / "registry")
    code, lines, _ = _run(
        capsys, "--config", config, "--registry", root, "--events", "1000",
        "--end-time", str(END_TIME), "--epochs", "1",
    )  # fmt: skip
    result = json.loads(lines[-1])
    assert code == 1 and result["status"] == "rejected" and result["promoted"] is False
    assert "below the floor" in result["reason"]
    registry = ModelRegistry(root)
    assert registry.current_version() is None
    assert registry.get(result["version"]).status == "rejected"


def test_the_first_window_is_validated_like_any_other(tmp_path, capsys):
    root = str(tmp_path / "registry")
    code, lines, _ = _run(
        capsys, "--config", "configs/traffic.yaml", "--registry", root, "--events", "150",
        "--end-time", str(END_TIME), "--epochs", "1",
    )  # fmt: skip
    result = json.loads(lines[-1])
    assert code == 1 and result["status"] == "rejected"
    assert result["reason"].startswith("data validation: too_few_rows")
    assert ModelRegistry(root).versions() == []


def test_a_second_version_is_gated_against_the_current(tmp_path, capsys):
    root = str(tmp_path / "registry")
    common = ["--config", "configs/traffic.yaml", "--registry", root, "--events", "1000"]
    common += ["--end-time", str(END_TIME), "--epochs", "2"]
    code, lines, _ = _run(capsys, *common, "--if-empty")
    first = json.loads(lines[-1])["version"]
    assert code == 0 and ModelRegistry(root).current_version() == first

    code, lines, _ = _run(capsys, *common, "--seed", "8", "--drift")
    result = json.loads(lines[-1])
    info = ModelRegistry(root).get(result["version"])
    assert info.metadata["parent_version"] == first
    assert info.metadata["current_metrics"]["rows"] == info.metadata["metrics"]["rows"]
    assert info.metadata["simulator"]["seed"] == 8 and info.metadata["simulator"]["drift"]
    assert any("[trainer] current " in line for line in lines)  # compared on the same rows


def test_history_rows_are_the_pipelines_training_rows():
    readings, _ = generate_history(TRAFFIC, 200, END_TIME)
    rows = list(training_rows(TRAFFIC, readings, END_TIME, "b"))
    columns = {c["name"] for c in training_schema(TRAFFIC)}
    assert all(set(r) == columns for r in rows)
    times = generate_history(TRAFFIC, 200, END_TIME)[1]
    assert [event_seconds(r) for r in rows] == pytest.approx(times)
    assert rows[0]["label_source"] == "inline" and len({r["example_id"] for r in rows}) == 200


def test_drift_makes_all_history_post_drift():
    plain, _ = generate_history(TRAFFIC, 3000, END_TIME)
    drifted, _ = generate_history(TRAFFIC, 3000, END_TIME, drift=True)
    assert [r["occupancy"] for r in plain] == [r["occupancy"] for r in drifted]  # same features
    base_plain = np.mean([r["congested"] for r in plain])
    base_drifted = np.mean([r["congested"] for r in drifted])
    assert base_drifted > base_plain + 0.1  # the lower threshold labels more congestion


def test_configs_the_simulator_cannot_produce_are_refused(tmp_path, capsys):
    code, _, err = _run(
        capsys, "--config", "configs/ad_conversions.yaml", "--registry", str(tmp_path)
    )
    assert code == 2
    assert err.startswith("error: ") and "does not describe the traffic simulator" in err
    assert ModelRegistry(str(tmp_path)).versions() == []


def test_bad_arguments_are_errors(tmp_path, capsys):
    base = ["--config", "configs/traffic.yaml", "--registry", str(tmp_path)]
    code, _, err = _run(capsys, *base, "--events", "10")
    assert code == 2 and "--events must be at least" in err
    code, _, err = _run(capsys, *base, "--project", "p")
    assert code == 2 and "both --project and --bq_dataset" in err


@pytest.mark.emulators
def test_run_status_lands_in_training_runs(bigquery_client, gcp_project, unique_name, tmp_path):
    """As run_local.sh calls it: the bootstrap run is in training_runs like any other."""
    from dataset.resources import ensure_bigquery_tables
    from trainer import runs

    ensure_bigquery_tables(gcp_project, unique_name, TRAFFIC, client=bigquery_client)
    try:
        buf = io.StringIO()
        with redirect_stdout(buf):
            code = main(
                [
                    "--config", "configs/traffic.yaml", "--registry", str(tmp_path / "r"),
                    "--project", gcp_project, "--bq_dataset", unique_name,
                    "--events", "1000", "--end-time", str(END_TIME), "--epochs", "2",
                    "--day-origin", str(END_TIME - 125), "--if-empty",
                ]
            )  # fmt: skip
        result = json.loads(buf.getvalue().splitlines()[-1])
        assert code == 0, buf.getvalue()[-2000:]
        history = runs.run_history(
            bigquery_client, gcp_project, unique_name, TRAFFIC, result["run_id"]
        )
        assert [r["status"] for r in history] == ["running", "succeeded"]
        assert history[-1]["trigger_id"] == "bootstrap"
        assert history[-1]["model_version"] == result["version"]
    finally:
        bigquery_client.delete_dataset(unique_name, delete_contents=True, not_found_ok=True)


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


def test_file_bootstrap_trains_on_the_first_rows_and_leaves_the_rest(tmp_path, capsys):
    """--from-file: the first N valid rows go through trainer.task; the rest is to replay."""
    from simulator.exports import export_history

    data = tmp_path / "history.jsonl"
    export_history(TRAFFIC, str(data), 1500, END_TIME)
    root, rest = str(tmp_path / "registry"), tmp_path / "rest.jsonl"
    code, lines, _ = _run(
        capsys, "--config", "configs/traffic.yaml", "--registry", root,
        "--from-file", str(data), "--rows", "1000", "--rest-file", str(rest), "--epochs", "2",
    )  # fmt: skip
    result = json.loads(lines[-1])
    assert code == 0 and result["promoted"] is True, lines[-5:]
    assert result["run_log"] == ["running", "succeeded"]  # one trainer run
    assert any(line.startswith("[trainer]") for line in lines)
    registry = ModelRegistry(root)
    assert registry.current_version() == result["version"]
    info = registry.get(result["version"])
    assert info.metadata["source"] == "file" and info.metadata["file"]["rows_taken"] == 1000
    assert info.metadata["training_data"]["rows"] == 1000
    # The replay skips the trained rows: the rest file is the file's last 500 lines.
    assert rest.read_text().splitlines() == data.read_text().splitlines()[1000:]
    assert result["split"]["rest_rows"] == 500


def test_file_mode_arguments(tmp_path, capsys):
    base = ["--config", "configs/ad_conversions.yaml", "--registry", str(tmp_path)]
    code, _, err = _run(capsys, *base, "--rows", "10")
    assert code == 2 and "--rows and --rest-file go with --from-file" in err
    code, _, err = _run(capsys, *base, "--from-file", "data/ad_conversions_sample.jsonl")
    assert code == 2 and "--from-file needs --rows" in err
    code, _, err = _run(
        capsys, *base, "--from-file", "data/ad_conversions_sample.jsonl", "--rows", "5000"
    )
    assert code == 2 and "only 350 valid rows" in err
    assert ModelRegistry(str(tmp_path)).versions() == []
