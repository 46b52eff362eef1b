"""trainer.gates: the infra gate and the quality gate reject bad candidates."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from dataset.config import RetrainingPolicy, load_config
from model.features import encode_batch, label_array
from tests.trainer.test_data import training_rows
from trainer.data import split_by_time
from trainer.gates import GateResult, current_model_metrics, infra_check, quality_check

TRAFFIC = load_config("configs/traffic.yaml")
TASK = "binary_classification"
POLICY = RetrainingPolicy(min_accuracy=0.8, max_quality_drop=0.02)


@pytest.fixture(scope="module")
def data():
    train, validation = split_by_time(training_rows(1500), 0.2)
    return (
        encode_batch(train, TRAFFIC),
        label_array(train, TRAFFIC),
        encode_batch(validation, TRAFFIC),
        label_array(validation, TRAFFIC),
    )


@pytest.fixture(scope="module")
def trained(data):
    from model.keras_model import build_model, fit

    x, y, _, _ = data
    model = build_model(TRAFFIC, seed=1)
    fit(model, x, y, epochs=15)
    return model


@pytest.fixture(scope="module")
def registry(tmp_path_factory, trained):
    from model.registry import ModelRegistry

    reg = ModelRegistry(str(tmp_path_factory.mktemp("gates") / "registry"))
    version = reg.publish(trained, {"note": "good"})
    reg.promote(version, reason="test")
    return reg


def test_good_candidate_passes_infra(registry, data):
    _, _, x_val, _ = data
    result = infra_check(registry, registry.current_version(), x_val[:64], task=TASK)
    assert isinstance(result, GateResult) and result.name == "infra"
    assert result.passed, result.reasons
    assert "serving_default" in result.details["signatures"]
    assert result.details["max_artifact_difference"] < 1e-3


def _copy_version(registry, trained) -> str:
    return registry.publish(trained, {"note": "to be broken"})


def test_saved_model_without_serving_signature_fails(registry, trained, data):
    import tensorflow as tf

    version = _copy_version(registry, trained)
    path = registry.saved_model_path(version)
    shutil.rmtree(path)
    module = tf.Module()
    module.v = tf.Variable(1.0)
    tf.saved_model.save(module, path)  # no signatures at all
    result = infra_check(registry, version, data[2][:16], task=TASK)
    assert not result.passed
    assert any("no 'serving_default' signature" in r for r in result.reasons), result.reasons


def test_unloadable_keras_file_fails(registry, trained, data):
    version = _copy_version(registry, trained)
    with open(registry.keras_path(version), "wb") as f:
        f.write(b"this is not a keras archive")
    result = infra_check(registry, version, data[2][:16], task=TASK)
    assert not result.passed
    assert any(r.startswith("model.keras does not load") for r in result.reasons), result.reasons


def test_nan_outputs_fail(registry, data):
    from model.keras_model import build_model

    model = build_model(TRAFFIC, seed=2)
    model.set_weights([np.full_like(w, np.nan) for w in model.get_weights()])
    version = registry.publish(model, {"note": "nan weights"})
    result = infra_check(registry, version, data[2][:16], task=TASK)
    assert not result.passed
    assert any("NaN or infinite" in r for r in result.reasons), result.reasons


def test_time_limit(registry, data, monkeypatch):
    """A load that has not finished at the limit fails the gate (the steps block until released)."""
    import threading

    from trainer import gates

    started, release = threading.Event(), threading.Event()

    def stuck(*args):
        started.set()
        release.wait(10)
        return {"reasons": [], "details": {}}

    monkeypatch.setattr(gates, "_infra_steps", stuck)
    try:
        result = infra_check(registry, registry.current_version(), data[2][:16], time_limit_s=0.2)
    finally:
        release.set()
    assert started.is_set()
    assert not result.passed and "longer than 0.2s" in result.reasons[0]
    # Steps that finish in time pass the same gate.
    monkeypatch.setattr(gates, "_infra_steps", lambda *a: {"reasons": [], "details": {}})
    assert infra_check(registry, "v", data[2][:16], time_limit_s=30).passed


def test_bad_sample_shape_fails(registry):
    assert not infra_check(registry, registry.current_version(), np.zeros((0, 7))).passed


def test_quality_below_the_floor_fails():
    result = quality_check({"accuracy": 0.7}, None, POLICY, TASK)
    assert not result.passed and "below the floor" in result.reasons[0]
    assert result.details["compared"] is False


def test_first_model_skips_the_comparison():
    result = quality_check({"accuracy": 0.9}, None, POLICY, TASK)
    assert result.passed
    assert any("comparison skipped" in r for r in result.reasons)


def test_within_and_beyond_the_allowed_drop():
    assert quality_check({"accuracy": 0.885}, {"accuracy": 0.9}, POLICY, TASK).passed
    worse = quality_check({"accuracy": 0.87}, {"accuracy": 0.9}, POLICY, TASK)
    assert not worse.passed and "worse than the current model" in worse.reasons[-1]


def test_no_floor_means_beating_the_constant_predictor():
    policy = RetrainingPolicy(min_accuracy=None)
    constant = {
        "accuracy": 0.7,
        "baseline_accuracy": 0.7,
        "log_loss": 0.7,
        "baseline_log_loss": 0.6,
    }
    assert not quality_check(constant, None, policy, TASK).passed
    assert quality_check(dict(constant, log_loss=0.3), None, policy, TASK).passed


def test_regression_rules():
    policy = RetrainingPolicy(max_quality_drop=0.05)
    good = {"rmse": 1.0, "baseline_rmse": 2.0}
    assert quality_check(good, None, policy, "regression").passed
    assert not quality_check({"rmse": 2.5, "baseline_rmse": 2.0}, None, policy, "regression").passed
    assert quality_check(good, {"rmse": 0.96}, policy, "regression").passed
    assert not quality_check(good, {"rmse": 0.9}, policy, "regression").passed
    assert not quality_check({"rmse": float("nan")}, None, policy, "regression").passed


def test_worse_candidate_than_current_on_the_same_rows(registry, data):
    from model.keras_model import build_model
    from trainer.metrics import evaluate

    _, _, x_val, y_val = data
    version, current, error = current_model_metrics(registry, x_val, y_val, TASK)
    assert version == registry.current_version() and error is None
    assert current["rows"] == len(y_val)
    untrained = build_model(TRAFFIC, seed=3)
    candidate = evaluate(untrained, x_val, y_val, TASK)
    policy = RetrainingPolicy(min_accuracy=0.0, max_quality_drop=0.02)
    result = quality_check(candidate, current, policy, TASK)
    assert current["accuracy"] - candidate["accuracy"] > 0.02
    assert not result.passed and "worse than the current model" in result.reasons[-1]


def test_current_model_metrics_without_or_with_an_incompatible_current(tmp_path, data):
    from model.registry import ModelRegistry

    _, _, x_val, y_val = data
    # Without a current version: nothing to compare with, and nothing is loaded.
    empty = ModelRegistry(str(tmp_path / "empty"))
    empty.publish(build_model_for_test(), {"note": "a candidate, never promoted"})
    assert empty.current_version() is None
    assert current_model_metrics(empty, x_val, y_val, TASK) == (None, None, None)
    # With a current version and rows of another feature width (e.g. after a config
    # change): the version is named, no metrics, the error says why; nothing raised.
    other = _registry_with_current(tmp_path)
    version, metrics, error = current_model_metrics(other, x_val[:, :3], y_val, TASK)
    assert version == other.current_version()
    assert metrics is None
    assert error and error.split(":")[0].endswith("Error")
    # The same current version on rows of the right width is evaluated.
    version, metrics, error = current_model_metrics(other, x_val, y_val, TASK)
    assert version == other.current_version() and error is None
    assert metrics["rows"] == len(y_val)


def build_model_for_test():
    from model.keras_model import build_model

    return build_model(TRAFFIC, seed=5)


def _registry_with_current(tmp_path):
    from model.keras_model import build_model
    from model.registry import ModelRegistry

    reg = ModelRegistry(str(tmp_path / "other"))
    reg.promote(reg.publish(build_model(TRAFFIC, seed=4), {}), reason="test")
    return reg
