"""The raw-feature SavedModel: encoding in the graph equals ``encode_features``."""

from __future__ import annotations

import dataclasses
import os
import zlib

import numpy as np
import pytest

from dataset.config import config_from_dict
from dataset.history_spec import HistoryFeatureSpec
from model import export
from model.features import encode_batch, feature_dim
from tests.helpers import ADS, TRAFFIC

# Every feature kind: bounded/unbounded numbers, bool, allowed values, free (hashed) strings.
MIXED = config_from_dict(
    {
        "name": "mixed",
        "key_field": "entity",
        "event_time": {"field": "ts", "format": "epoch_seconds"},
        "features": {
            "amount": {"type": "float"},
            "count": {"type": "int", "min": 0, "max": 10},
            "flag": {"type": "bool"},
            "city": {"type": "string"},
            "tier": {"type": "string", "values": ["gold", "silver"]},
            "ratio": {"type": "float", "min": -1, "max": 1},
        },
        "label": {"field": "y", "type": "int", "task": "binary_classification"},
        "windows": {"specs": [{"name": "w", "kind": "fixed", "size_seconds": 60}]},
    }
)

# MIXED with history features of every kind (model.history): NaN/None means no history.
MIXED_HISTORY = dataclasses.replace(
    MIXED,
    history_features=(
        HistoryFeatureSpec("amount_mean_3", "mean", "amount", 3),
        HistoryFeatureSpec("count_max_2", "max", "count", 2),
        HistoryFeatureSpec("flag_last", "last", "flag", 1),
        HistoryFeatureSpec("y_rate_4", "label_mean", None, 4),
        HistoryFeatureSpec("y_last", "last_label", None, 1),
    ),
)


def test_crc32_in_tensorflow_is_zlibs():
    import tensorflow as tf

    values = ["", "a", "abc", "hello world", "é-ü-€", "x" * 300, "S0001", "\x00\xff"]
    got = export.crc32_tf(tf.constant(values)).numpy()
    assert got.tolist() == [zlib.crc32(v.encode()) for v in values]
    assert export.crc32_tf(tf.constant([], dtype=tf.string)).numpy().tolist() == []


@pytest.mark.parametrize(
    "config", [TRAFFIC, ADS, MIXED, MIXED_HISTORY], ids=["traffic", "ads", "mixed", "history"]
)
def test_encode_tf_equals_encode_batch(config):
    rows = export.probe_rows(config, n=200, seed=3)
    expected = encode_batch(rows, config)
    got = export.encode_tf(export.raw_inputs(rows, config), config).numpy()
    assert got.shape == (200, feature_dim(config))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_probe_rows_cover_out_of_domain_values():
    rows = export.probe_rows(MIXED, n=200)
    counts = [row["count"] for row in rows]
    assert min(counts) < 0 and max(counts) > 10
    assert {"gold", "silver"} < {row["tier"] for row in rows}
    assert any(row["tier"] not in ("gold", "silver") for row in rows)


def _published(tmp_path, config, seed=1):
    from model.keras_model import build_model
    from model.registry import ModelRegistry

    registry = ModelRegistry(str(tmp_path / "registry"))
    model = build_model(config, seed=seed)
    version = registry.publish(model, {"note": "export"}, config=config)
    return registry, version, model


def test_published_saved_model_takes_named_raw_features(tmp_path):
    import tensorflow as tf

    registry, version, model = _published(tmp_path, MIXED)
    loaded = tf.saved_model.load(registry.saved_model_path(version))
    raw = loaded.signatures["serving_default"]
    _, inputs = raw.structured_input_signature
    assert {name: spec.dtype for name, spec in inputs.items()} == {
        "amount": tf.float32,
        "count": tf.int64,
        "flag": tf.bool,
        "city": tf.string,
        "tier": tf.string,
        "ratio": tf.float32,
    }
    assert all(spec.shape.as_list() == [None] for spec in inputs.values())
    rows = export.probe_rows(MIXED, n=50, seed=9)
    expected = model.predict(encode_batch(rows, MIXED), verbose=0)
    got = raw(**export.raw_inputs(rows, MIXED))["prediction"].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    encoded = loaded.signatures["serving_encoded"]
    _, vector = encoded.structured_input_signature
    assert vector["features"].shape.as_list() == [None, feature_dim(MIXED)]


def test_the_infra_gate_passes_a_raw_feature_export(tmp_path):
    from trainer.gates import infra_check

    registry, version, _ = _published(tmp_path, TRAFFIC)
    x = encode_batch(export.probe_rows(TRAFFIC, n=16), TRAFFIC)
    result = infra_check(registry, version, x, time_limit_s=120, task="binary_classification")
    assert result.passed, result.reasons
    assert result.details["signature_input"]["name"] == "features"


def test_a_skewed_export_is_refused_and_never_published(tmp_path, monkeypatch):
    from model.registry import ModelRegistry

    real = export.encode_tf

    def skewed(features, config):
        return real(features, config) * 0.5

    monkeypatch.setattr(export, "encode_tf", skewed)
    with pytest.raises(ValueError, match="serving_default.*disagrees"):
        _published(tmp_path, TRAFFIC)
    registry = ModelRegistry(str(tmp_path / "registry"))
    assert registry.versions() == []
    versions_dir = tmp_path / "registry" / "versions"
    assert not versions_dir.exists() or not [
        n for n in os.listdir(versions_dir) if not n.startswith(".")
    ]


def test_a_model_of_another_width_is_refused(tmp_path):
    from model.keras_model import build_model

    with pytest.raises(ValueError, match="feature width"):
        export.export_saved_model(build_model(TRAFFIC), str(tmp_path / "sm"), ADS)


def test_history_features_are_extra_named_float_inputs(tmp_path):
    import tensorflow as tf

    registry, version, model = _published(tmp_path, MIXED_HISTORY)
    raw = tf.saved_model.load(registry.saved_model_path(version)).signatures["serving_default"]
    _, inputs = raw.structured_input_signature
    names = [s.name for s in MIXED_HISTORY.history_features]
    assert all(inputs[name].dtype == tf.float32 for name in names)
    rows = export.probe_rows(MIXED_HISTORY, n=30, seed=4)
    assert any(row["y_last"] is None for row in rows)  # missing history is probed too
    expected = model.predict(encode_batch(rows, MIXED_HISTORY), verbose=0)
    got = raw(**export.raw_inputs(rows, MIXED_HISTORY))["prediction"].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
