import math

import pytest

from dataset.config import config_from_dict
from model.features import encode_features, feature_columns, feature_dim, model_inputs
from model.history import (
    expired,
    history_default,
    history_in_order,
    history_values,
    new_state,
    step,
)
from tests.helpers import T0
from transforms.labeling import training_row

RAW = {
    "name": "h",
    "key_field": "k",
    "event_time": {"field": "t", "format": "epoch_seconds"},
    "features": {
        "x": {"type": "float", "min": 0, "max": 10},
        "n": {"type": "int"},
        "c": {"type": "string", "values": ["a", "b"]},
    },
    "label": {"field": "y", "type": "int", "task": "binary_classification"},
    "windows": {"specs": [{"name": "w", "kind": "fixed", "size_seconds": 60}]},
    "history_features": {
        "x_mean_3": {"of": "x", "agg": "mean", "last": 3},
        "x_max_2": {"of": "x", "agg": "max", "last": 2},
        "n_last": {"of": "n", "agg": "last"},
        "y_rate_2": {"agg": "label_mean", "last": 2},
        "y_last": {"agg": "last_label"},
    },
}
CONFIG = config_from_dict(RAW, source="test")
SPECS = CONFIG.history_features


def record(key, t, x, n=1, y=0, c="a", i=0):
    return {
        "kind": "features",
        "message_id": f"m{key}{i}",
        "join_id": None,
        "key": key,
        "event_time": t,
        "features": {"x": x, "n": n, "c": c},
        "label": y,
    }


def test_first_event_of_a_key_has_no_history_and_encodes_the_defaults():
    values = history_values(new_state(SPECS), SPECS)
    assert values == {s.name: None for s in SPECS}
    vector = encode_features(model_inputs({**record("a", T0, 4.0), "history": values}), CONFIG)
    tail = dict(zip(feature_columns(CONFIG)[-5:], vector[-5:].tolist(), strict=True))
    # x has min/max and the label is binary: the middle, 0.5; n is unscaled: 0.
    assert tail == {"x_mean_3": 0.5, "x_max_2": 0.5, "n_last": 0.0, "y_rate_2": 0.5, "y_last": 0.5}
    assert history_default(SPECS[2], CONFIG) == 0.0


def test_values_come_from_previous_events_only_never_the_current_one():
    state = new_state(SPECS)
    seen = []
    for i, (x, y) in enumerate([(1.0, 1), (2.0, 0), (6.0, 1), (9.0, 1)]):
        seen.append(step(state, SPECS, {"x": x, "n": i}, y, T0 + i))
    assert seen[1] == {
        "x_mean_3": 1.0,
        "x_max_2": 1.0,
        "n_last": 0.0,
        "y_rate_2": 1.0,
        "y_last": 1.0,
    }
    assert seen[2] == {
        "x_mean_3": 1.5,
        "x_max_2": 2.0,
        "n_last": 1.0,
        "y_rate_2": 0.5,
        "y_last": 0.0,
    }
    assert seen[3] == {
        "x_mean_3": 3.0,
        "x_max_2": 6.0,
        "n_last": 2.0,
        "y_rate_2": 0.5,
        "y_last": 1.0,
    }


def test_the_current_rows_label_and_value_never_change_its_own_history():
    """No leakage: flipping the current row's label or feature leaves its values unchanged."""
    base = [record("a", T0 + i, float(i), y=i % 2, i=i) for i in range(6)]
    for flip in range(6):
        changed = [dict(r) for r in base]
        changed[flip] = {
            **changed[flip],
            "label": 1 - base[flip]["label"],
            "features": {"x": 9.5, "n": 77, "c": "b"},
        }
        a, b = history_in_order(CONFIG, base), history_in_order(CONFIG, changed)
        assert a[: flip + 1] == b[: flip + 1], flip  # its own values and everything before
        if flip < 5:
            assert a[flip + 1] != b[flip + 1]  # ...the next row does see it


def test_deques_are_bounded_by_the_largest_window():
    state = new_state(SPECS)
    for i in range(50):
        step(state, SPECS, {"x": float(i % 10), "n": i}, i % 2, T0 + i)
    assert state.values["x"].maxlen == 3 and len(state.values["x"]) == 3
    assert state.values["n"].maxlen == 1
    assert state.labels.maxlen == 2 and list(state.labels) == [0.0, 1.0]


def test_keys_are_independent_and_expire_after_the_ttl():
    rows = [
        record("a", T0, 2.0, y=1),
        record("b", T0 + 1, 8.0, y=0),
        record("a", T0 + 2, 4.0, y=0),
        record("a", T0 + 500, 6.0, y=0),
    ]
    values = history_in_order(CONFIG, rows, ttl_seconds=100)
    assert values[1]["x_mean_3"] is None  # b's first event: a's history does not leak across keys
    assert values[2]["x_mean_3"] == 2.0 and values[2]["y_last"] == 1.0
    assert all(v is None for v in values[3].values())  # a was idle 498 s > ttl: starts over
    state = new_state(SPECS)
    step(state, SPECS, {"x": 1.0}, 0, T0)
    assert not expired(state, T0 + 100, 100) and expired(state, T0 + 101, 100)


def test_serving_record_and_training_row_encode_to_the_same_vector():
    rows = [record("a", T0 + i, float(i), n=i, y=i % 2, i=i) for i in range(4)]
    history = history_in_order(CONFIG, rows)
    served = {**rows[3], "history": history[3]}
    row = training_row(CONFIG, served, served["label"], T0 + 3, "inline", now=T0 + 3)
    assert {s.name: row[s.name] for s in SPECS} == history[3]
    a = encode_features(model_inputs(served), CONFIG)
    b = encode_features(row, CONFIG)
    assert a.shape == (feature_dim(CONFIG),) == (2 + 2 + 5,)
    assert a.tolist() == b.tolist()
    assert not math.isclose(a[-5], history_default(SPECS[0], CONFIG))


def test_configs_without_history_encode_as_before():
    plain = config_from_dict({k: v for k, v in RAW.items() if k != "history_features"}, "t")
    assert plain.history_features == () and feature_dim(plain) == 4
    row = {"x": 5.0, "n": 3, "c": "b"}
    assert encode_features(row, plain).tolist() == [0.5, 3.0, 0.0, 1.0]
    with pytest.raises(KeyError):
        encode_features({"x": 5.0}, plain)


def test_attach_history_computes_in_event_time_order_and_keeps_the_given_order():
    from model.history import attach_history

    rows = [record("a", T0 + 60, 5.0, y=1, i=1), record("a", T0, 1.0, y=0, i=0)]
    label = {"kind": "label", "event_time": T0, "label": 1}
    out = attach_history(CONFIG, [rows[0], label, rows[1]])
    assert out[1] is label
    assert out[2]["history"]["x_mean_3"] is None  # the earlier event comes first
    assert out[0]["history"]["x_mean_3"] == 1.0 and out[0]["history"]["y_last"] == 0.0
