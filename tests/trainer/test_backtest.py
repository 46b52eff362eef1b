"""trainer.backtest / trainer.backtest_replay: replay, prequential scoring, no leakage."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from dataset.config import config_from_dict, load_config
from simulator.exports import export_history
from trainer import backtest as bt
from trainer.backtest_replay import load_replay

END = 1_767_225_600.0  # 2026-01-01T00:00:00Z
# Small fits keep every retrain well under a second.
FAST_MODEL = {"epochs": 3, "min_steps": 40, "early_stopping_patience": 0}


def traffic_config(history=None, **retraining):
    with open("configs/traffic.yaml", encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    raw["history_features"] = history
    raw["retraining"] = {
        "min_new_examples": 110,
        "min_interval_seconds": 0,
        "training_window_rows": 200,
        "validation_fraction": 0.2,
        # Every candidate passes the gates: this test is about what serves when.
        "min_accuracy": 0.0,
        "max_quality_drop": 1.0,
        **retraining,
    }
    raw["model"] = FAST_MODEL
    return config_from_dict(raw, source="test")


@pytest.fixture(scope="module")
def traffic_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("bt") / "traffic.jsonl"
    export_history(
        load_config("configs/traffic.yaml"), str(path), 420, END, n_sensors=40, drift_after=20.0
    )
    return str(path)


OPTS = bt.BacktestOptions(training_delay_seconds=0.0, seed=0, epochs=2, min_rows=50, audit=True)


def assert_no_leakage(replay, run):
    scored = replay.scored_indexes()
    assert len(scored) > 0
    for i in scored:
        model = run.models[run.versions[i]]
        assert replay.example_ids[i] not in model.example_ids, (i, run.versions[i])
        assert model.label_cutoff <= replay.times[i]
        assert model.serves_from <= replay.times[i]


def test_no_row_is_predicted_by_a_model_that_saw_its_label(traffic_file):
    config = traffic_config()
    replay = load_replay(traffic_file, config, 0.15)
    first = bt.first_model(config, replay, OPTS)
    run = bt.run_policy("configured", config, config.retraining, replay, first, OPTS)
    assert run.promotions >= 2  # several models served, not just the first
    assert len({run.versions[i] for i in replay.scored_indexes()}) >= 3
    assert_no_leakage(replay, run)
    # Every row after the warm-up is predicted; warm-up rows are not.
    assert np.isnan(run.predictions[: replay.warmup_rows]).all()
    assert not np.isnan(run.predictions[replay.warmup_rows :]).any()


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return str(path)


def ads_config(**label):
    with open("configs/ad_conversions.yaml", encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    raw["label"].update(label)
    raw["model"] = FAST_MODEL
    return config_from_dict(raw, source="test")


def impression(i, t_ms, **extra):
    return {
        "impression_id": f"imp-{i}",
        "ad_id": f"ad_{i % 3}",
        "ts_millis": t_ms,
        "bid_price": 1.0,
        "slot_position": 1 + i % 5,
        "device": "mobile",
        "user_recent_clicks": i % 7,
        **extra,
    }


def test_separate_labels_join_time_out_and_dead_letter(tmp_path):
    config = ads_config()  # max_delay_seconds 600, negative_on_timeout
    rows = [
        impression(0, 0),
        impression(1, 1000),
        impression(2, 2000),
        {"impression_id": "imp-0", "ts_millis": 30_000, "converted": 1},  # joins at 30 s
        {"impression_id": "imp-1", "ts_millis": 900_000, "converted": 1},  # too late
        {"impression_id": "imp-0", "ts_millis": 40_000, "converted": 1},  # second label
        {"impression_id": "imp-9", "ts_millis": 50_000, "converted": 1},  # no features
        impression(3, 3000, bid_price=-5),  # out of range
        "not json",
    ]
    replay = load_replay(write_jsonl(tmp_path / "ads.jsonl", rows), config, 0.3)
    assert replay.rows == 3
    assert replay.invalid_rows == 5
    assert replay.invalid_reasons == {
        "invalid_json": 1,
        "invalid_record": 1,
        "join_conflict": 1,
        "label_without_features": 2,
    }
    assert replay.labels.tolist() == [1.0, 0.0, 0.0]
    assert replay.land_times.tolist() == [30.0, 601.0, 602.0]
    assert [r["label_source"] for r in replay.training_rows] == ["message", "timeout", "timeout"]
    assert replay.training_rows[0]["label_time"].timestamp() == 30.0
    # The warm-up (1 row asked) lasts until its label landed at 30 s: all 3 rows.
    assert replay.warmup_end == 30.0 and replay.warmup_rows == 3

    config = ads_config(negative_on_timeout=False)
    replay = load_replay(write_jsonl(tmp_path / "ads.jsonl", rows), config, 0.3)
    assert replay.labels[0] == 1.0 and np.isnan(replay.labels[1:]).all()
    assert replay.training_rows[1] is None


def test_separate_labels_never_leak_with_delayed_landing(tmp_path):
    raw = yaml.safe_load(open("configs/ad_conversions.yaml", encoding="utf-8"))
    raw["label"]["max_delay_seconds"] = 60
    raw["retraining"] = {
        "min_new_examples": 60,
        "min_interval_seconds": 0,
        "min_accuracy": 0.0,
        "max_quality_drop": 1.0,
    }
    raw["model"] = FAST_MODEL
    config = config_from_dict(raw, source="test")
    rng = np.random.default_rng(3)
    rows = []
    for i in range(260):
        t = i * 1000
        rows.append(impression(i, t, user_recent_clicks=int(rng.integers(0, 20))))
        if rng.random() < 0.4:
            rows.append(
                {
                    "impression_id": f"imp-{i}",
                    "ts_millis": t + int(rng.integers(1, 50_000)),
                    "converted": 1,
                }
            )
    replay = load_replay(write_jsonl(tmp_path / "ads.jsonl", rows), config, 0.3)
    first = bt.first_model(config, replay, OPTS)
    run = bt.run_policy("configured", config, config.retraining, replay, first, OPTS)
    assert run.promotions + run.rejections >= 2
    assert_no_leakage(replay, run)
    # The first model only saw labels landed by the end of the warm-up.
    assert first.label_cutoff <= replay.warmup_end


def test_baselines_use_only_labels_landed_before_the_prediction(tmp_path):
    config = ads_config()
    rows = [
        impression(0, 0),
        {"impression_id": "imp-0", "ts_millis": 100_000, "converted": 1},
        impression(3, 50_000),  # ad_0 again, before imp-0's label landed
        impression(6, 200_000),  # ad_0 again, after it landed
    ]
    replay = load_replay(write_jsonl(tmp_path / "ads.jsonl", rows), config, 0.3)
    base = bt.baselines(replay, classification=True)
    assert replay.keys == ["ad_0", "ad_0", "ad_0"]
    assert base["no_change"].tolist() == [0.0, 0.0, 1.0]
    assert base["majority"].tolist() == [0.0, 0.0, 1.0]


def test_score_kappa_temporal_against_no_change():
    y = np.array([1, 0, 1, 1])
    out = bt.score(y, np.array([0.9, 0.2, 0.8, 0.4]), np.array([1, 1, 1, 0]), True)
    assert out["accuracy"] == 0.75
    assert out["kappa_temporal"] == pytest.approx((0.75 - 0.5) / 0.5)
    assert out["rows_scored"] == 4
    reg = bt.score(np.array([1.0, 2.0]), np.array([1.5, 2.0]), np.array([2.0, 1.0]), False)
    assert reg["mae"] == 0.25 and reg["kappa_temporal"] == pytest.approx(0.75)


def test_first_model_is_deterministic(traffic_file):
    config = traffic_config()
    replay = load_replay(traffic_file, config, 0.15)
    replay.warmup_rows = 60  # a small first model is enough here
    a = bt.first_model(config, replay, OPTS).predict(replay.x[:50])
    b = bt.first_model(config, replay, OPTS).predict(replay.x[:50])
    np.testing.assert_array_equal(a, b)


def test_rejection_kind_names_the_failing_check():
    reasons = ["accuracy 0.81 >= floor 0.80", "worse than the current model on the same rows: x"]
    assert bt.rejection_kind(reasons) == "worse_than_current"
    assert bt.rejection_kind(["data validation: too_few_rows"]) == "data_validation"
    assert bt.rejection_kind(["accuracy 0.7 is below the floor 0.8"]) == "min_accuracy"


HISTORY = {
    "occ_mean_3": {"of": "occupancy", "agg": "mean", "last": 3},
    "last_congested": {"agg": "last_label"},
}


def test_history_features_in_event_time_order_stored_and_encoded(tmp_path):
    from model.features import encode_features, feature_dim
    from tests.helpers import traffic_payload

    config = traffic_config(HISTORY)
    rows = []
    for i in range(12):  # written out of order: the replay sorts by event time
        for s in ("S1", "S2"):
            occupancy = 0.05 * i if s == "S1" else 0.05
            rows.append(
                traffic_payload(s, END - 3600 + 60 * i, occupancy=occupancy, congested=i % 2)
            )
    path = write_jsonl(tmp_path / "h.jsonl", list(reversed(rows)))
    replay = load_replay(path, config, 0.25)
    assert replay.invalid_examples == []
    assert replay.x.shape == (24, feature_dim(config)) == (24, 9)
    s1 = [i for i in range(24) if replay.keys[i] == "S1"]
    got = [
        (replay.training_rows[i]["occ_mean_3"], replay.training_rows[i]["last_congested"])
        for i in s1
    ]
    assert got[0] == (None, None)  # the first event: no history
    assert got[1] == (0.0, 0.0)
    assert got[4] == (pytest.approx(0.1), 1.0)  # mean of 0.05, 0.1, 0.15; event 3's label
    for i in range(24):  # the row the trainer reads encodes to what was predicted
        assert encode_features(replay.training_rows[i], config).tolist() == replay.x[i].tolist()


def test_a_policy_with_history_features_never_leaks(traffic_file):
    config = traffic_config(HISTORY)
    replay = load_replay(traffic_file, config, 0.15)
    first = bt.first_model(config, replay, OPTS)
    run = bt.run_policy("configured", config, config.retraining, replay, first, OPTS)
    assert run.promotions >= 2, run.runs
    assert_no_leakage(replay, run)
