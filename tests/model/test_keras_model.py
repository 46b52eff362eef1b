"""model.keras_model and the config's model: section (dataset.config.ModelSpec)."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from dataset.config import ModelSpec, config_from_dict, load_config
from model.features import feature_dim


def config_with(model):
    with open("configs/traffic.yaml", encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    raw["model"] = model
    return config_from_dict(raw, source="test")


def test_configs_without_a_model_section_keep_todays_model():
    for path in ("configs/traffic.yaml", "configs/ad_conversions.yaml"):
        assert load_config(path).model == ModelSpec()
    spec = ModelSpec()
    assert (spec.architecture, spec.hidden_units, spec.learning_rate) == ("mlp", (16,), 0.01)
    assert spec.epochs is None and spec.min_steps == 600


def test_model_section_is_parsed_and_validated():
    spec = config_with({"architecture": "linear", "epochs": 5, "class_weight": "balanced"}).model
    assert spec.architecture == "linear" and spec.epochs == 5 and spec.class_weight == "balanced"
    assert config_with({"hidden_units": [32, 8]}).model.hidden_units == (32, 8)
    for bad, message in (
        ({"architecture": "tree"}, "model.architecture"),
        ({"hidden_units": [0]}, "model.hidden_units"),
        ({"hidden_units": []}, "model.hidden_units"),
        ({"epochs": 0}, "model.epochs"),
        ({"learning_rate": 0}, "model.learning_rate"),
        ({"feature_scaling": "log"}, "model.feature_scaling"),
        ({"layers": 3}, "model.layers"),
    ):
        with pytest.raises(ValueError, match=message):
            config_with(bad)


def test_architectures_and_standardization():
    from model.keras_model import build_model, class_weights, fit

    dense = [layer.name for layer in build_model(config_with({"hidden_units": [8, 4]})).layers]
    assert dense == ["features", "hidden", "hidden2", "prediction"]
    linear = build_model(config_with({"architecture": "linear"}))
    assert [layer.name for layer in linear.layers] == ["features", "prediction"]

    config = config_with({"feature_scaling": "standardize", "epochs": 1, "min_steps": 1})
    model = build_model(config)
    x = np.random.default_rng(0).normal(5.0, 2.0, (64, feature_dim(config))).astype(np.float32)
    fit(model, x, (x[:, 0] > 5).astype(np.float32))
    mean = model.get_layer("standardize").mean.numpy().ravel()
    np.testing.assert_allclose(mean, x.mean(axis=0), rtol=1e-4)

    assert class_weights(np.array([0, 0, 0, 1])) == {0: 4 / 6, 1: 2.0}
    assert class_weights(np.array([1, 1])) is None


def test_epochs_from_the_config_override_the_trainer_default():
    from model.keras_model import build_model, fit

    config = config_with({"epochs": 2, "min_steps": 0})
    x = np.zeros((40, feature_dim(config)), dtype=np.float32)
    y = np.zeros(40, dtype=np.float32)
    history = fit(build_model(config), x, y, epochs=8)
    assert len(history.history["loss"]) == 2


def test_auto_scaling_standardizes_only_numbers_without_a_config_range():
    from model.keras_model import build_model, fit

    # Both shipped configs declare every range: no extra layer, the numpy fast path stays.
    assert "standardize" not in [layer.name for layer in build_model(load_config(
        "configs/traffic.yaml")).layers]  # fmt: skip
    with open("configs/traffic.yaml", encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    del raw["features"]["vehicle_count"]["max"]  # now a raw number (column 0)
    raw["model"] = {"epochs": 1, "min_steps": 1}
    config = config_from_dict(raw, source="test")
    model = build_model(config)
    x = np.random.default_rng(0).normal(50.0, 10.0, (64, feature_dim(config))).astype(np.float32)
    fit(model, x, (x[:, 0] > 50).astype(np.float32))
    layer = model.get_layer("standardize")
    mean, variance = layer.mean.numpy().ravel(), layer.variance.numpy().ravel()
    assert mean[0] == pytest.approx(x[:, 0].mean(), rel=1e-4)
    assert (mean[1:] == 0).all() and (variance[1:] == 1).all()


def test_scaled_columns_cover_history_features():
    from model.keras_model import build_model, fit, scaled_columns

    with open("configs/traffic.yaml", encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    raw["features"]["vehicle_count"].pop("max")  # a raw number: auto scaling standardizes
    raw["history_features"] = {
        "count_mean_3": {"of": "vehicle_count", "agg": "mean", "last": 3},  # raw like its source
        "last_congested": {"agg": "last_label"},  # 0/1
    }
    raw["model"] = {"epochs": 1, "min_steps": 1}
    config = config_from_dict(raw, source="test")
    columns = scaled_columns(config)
    assert len(columns) == feature_dim(config) == 9
    assert columns[-2:].tolist() == [False, True]
    model = build_model(config)
    x = np.random.default_rng(0).normal(50.0, 10.0, (64, 9)).astype(np.float32)
    fit(model, x, (x[:, 0] > 50).astype(np.float32))
    mean = model.get_layer("standardize").mean.numpy().ravel()
    assert mean[-2] == pytest.approx(x[:, -2].mean(), rel=1e-4) and mean[-1] == 0
