"""trainer.validation: the schema proto, statistics and every check."""

from __future__ import annotations

import json
import math

import pytest
from tensorflow_metadata.proto.v0 import schema_pb2

from dataset.config import config_from_dict, load_config
from tests.trainer.test_data import training_rows
from trainer.validation import (
    CHECKS,
    compute_statistics,
    jensen_shannon_distance,
    l_infinity_distance,
    schema_from_config,
    validate,
)

TRAFFIC = load_config("configs/traffic.yaml")
ADS = load_config("configs/ad_conversions.yaml")


@pytest.fixture(scope="module")
def clean():
    return training_rows(600)


def _checks(result, severity="error"):
    return {(a["check"], a["feature"]) for a in result.anomalies if a["severity"] == severity}


def test_schema_proto_from_config():
    schema = schema_from_config(TRAFFIC)
    assert isinstance(schema, schema_pb2.Schema)
    by_name = {f.name: f for f in schema.feature}
    assert list(by_name) == [*TRAFFIC.feature_names, "congested"]
    count = by_name["vehicle_count"]
    assert count.type == schema_pb2.INT
    assert (count.int_domain.min, count.int_domain.max) == (0, 400)
    speed = by_name["mean_speed_kmh"]
    assert speed.type == schema_pb2.FLOAT
    assert (speed.float_domain.min, speed.float_domain.max) == (0.0, 200.0)
    road = by_name["road_type"]
    assert road.type == schema_pb2.BYTES
    assert list(road.string_domain.value) == ["highway", "arterial", "local"]
    for f in schema.feature:
        assert f.presence.min_fraction == 1.0
        assert (f.value_count.min, f.value_count.max) == (1, 1)
    assert speed.drift_comparator.jensen_shannon_divergence.threshold == pytest.approx(0.25)
    assert road.drift_comparator.infinity_norm.threshold == pytest.approx(0.25)
    assert not by_name["hour_of_day"].HasField("drift_comparator")  # drift_check: false
    assert by_name["hour_of_day"].float_domain.max == 24.0
    label = by_name["congested"]
    assert (label.int_domain.min, label.int_domain.max) == (0, 1)
    assert list(label.not_in_environment) == ["SERVING"]
    assert list(schema.default_environment) == ["TRAINING", "SERVING"]
    # Round-trips as a proto (what TFX components exchange).
    assert schema_pb2.Schema.FromString(schema.SerializeToString()) == schema


def test_schema_for_other_types():
    raw = {
        "name": "x",
        "key_field": "k",
        "event_time": {"field": "t"},
        "features": {"flag": {"type": "bool"}, "free": {"type": "string"}},
        "label": {"field": "y", "type": "float", "task": "regression", "min": 0, "max": 10},
        "windows": {"specs": [{"name": "w", "kind": "fixed", "size_seconds": 60}]},
    }
    schema = schema_from_config(config_from_dict(raw))
    by_name = {f.name: f for f in schema.feature}
    assert by_name["flag"].HasField("bool_domain")
    assert by_name["free"].WhichOneof("domain_info") is None
    assert not by_name["free"].HasField("drift_comparator")  # no drift_threshold configured
    assert by_name["y"].type == schema_pb2.FLOAT
    assert by_name["y"].float_domain.max == 10.0
    assert {f.name for f in schema_from_config(ADS).feature} >= set(ADS.feature_names)


def test_statistics_are_json_and_use_config_bins(clean):
    stats = compute_statistics(clean, TRAFFIC)
    json.dumps(stats)
    assert stats["rows"] == 600
    count = stats["features"]["vehicle_count"]
    assert count["histogram"]["edges"][0] == 0.0 and count["histogram"]["edges"][-1] == 400.0
    assert sum(count["histogram"]["counts"]) == 600
    assert count["missing_fraction"] == 0.0
    assert 0.0 <= count["min"] <= count["mean"] <= count["max"] <= 400
    road = stats["features"]["road_type"]
    assert set(road["frequencies"]) <= {"highway", "arterial", "local"}
    assert sum(road["frequencies"].values()) == pytest.approx(1.0)
    assert stats["label"]["kind"] == "categorical"
    assert stats["event_time"]["start"] < stats["event_time"]["end"]


def test_clean_data_passes(clean):
    result = validate(clean, TRAFFIC)
    assert result.ok, result.anomalies
    assert result.anomalies == [] and result.drift == {}
    # And against its own statistics: no drift at all.
    again = validate(clean, TRAFFIC, compute_statistics(clean, TRAFFIC))
    assert again.ok and again.anomalies == []
    assert all(d["distance"] == 0.0 for d in again.drift.values())


def test_missing_feature(clean):
    rows = [{k: v for k, v in r.items() if k != "occupancy"} for r in clean]
    result = validate(rows, TRAFFIC)
    assert not result.ok
    assert ("missing_feature", "occupancy") in _checks(result)
    nulls = [dict(r, road_type=None) for r in clean]
    assert ("missing_feature", "road_type") in _checks(validate(nulls, TRAFFIC))


def test_unexpected_feature(clean):
    rows = [dict(r, weather="rain") if i % 10 == 0 else r for i, r in enumerate(clean)]
    result = validate(rows, TRAFFIC)
    assert ("unexpected_feature", "weather") in _checks(result)
    anomaly = next(a for a in result.anomalies if a["check"] == "unexpected_feature")
    assert anomaly["example_ids"][:2] == ["ex-0", "ex-10"]
    # The lineage columns are expected.
    assert validate(clean, TRAFFIC).ok


def test_type_mismatch(clean):
    rows = [dict(r) for r in clean]
    rows[5]["mean_speed_kmh"] = "fast"
    rows[6]["vehicle_count"] = 12.5
    rows[7]["road_type"] = 3
    result = validate(rows, TRAFFIC)
    assert {
        ("type_mismatch", "mean_speed_kmh"),
        ("type_mismatch", "vehicle_count"),
        ("type_mismatch", "road_type"),
    } <= _checks(result)
    speed = next(a for a in result.anomalies if a["feature"] == "mean_speed_kmh")
    assert speed["example_ids"] == ["ex-5"] and "FLOAT" in speed["detail"]
    # Integers are fine for a FLOAT feature, integral floats for an INT feature.
    ok = [dict(r, mean_speed_kmh=50, vehicle_count=float(r["vehicle_count"])) for r in clean]
    assert validate(ok, TRAFFIC).ok


def test_out_of_domain(clean):
    rows = [dict(r) for r in clean]
    rows[1]["occupancy"] = 3.5
    rows[2]["vehicle_count"] = -4
    rows[3]["road_type"] = "motorway"
    rows[4]["mean_speed_kmh"] = math.nan
    result = validate(rows, TRAFFIC)
    assert {
        ("out_of_domain", "occupancy"),
        ("out_of_domain", "vehicle_count"),
        ("out_of_domain", "road_type"),
        ("out_of_domain", "mean_speed_kmh"),
    } <= _checks(result)
    occupancy = next(a for a in result.anomalies if a["feature"] == "occupancy")
    assert occupancy["example_ids"] == ["ex-1"] and "above max 1" in occupancy["detail"]
    # Out-of-range values land in the overflow bin of the statistics.
    assert result.statistics["features"]["occupancy"]["histogram"]["overflow"] == 1


def test_low_presence(clean):
    rows = [dict(r) for r in clean]
    for r in rows[:30]:
        r["hour_of_day"] = None
    result = validate(rows, TRAFFIC)
    assert _checks(result) == {("low_presence", "hour_of_day")}
    anomaly = result.errors[0]
    assert "95.00%" in anomaly["detail"] and len(anomaly["example_ids"]) == 20


def test_value_count(clean):
    rows = [dict(r) for r in clean]
    rows[9]["vehicle_count"] = [10, 12]
    rows[10]["road_type"] = ["local"]
    result = validate(rows, TRAFFIC)
    assert {("value_count", "vehicle_count"), ("value_count", "road_type")} <= _checks(result)


def test_too_few_rows(clean):
    result = validate(clean[:50], TRAFFIC)
    assert _checks(result) == {("too_few_rows", None)}
    assert validate(clean[:50], TRAFFIC, min_rows=10).ok
    empty = validate([], TRAFFIC)
    assert not empty.ok and empty.statistics["rows"] == 0


def test_label_checks(clean):
    rows = [dict(r) for r in clean]
    rows[0]["congested"] = None
    rows[1]["congested"] = 2
    rows[2]["congested"] = "yes"
    result = validate(rows, TRAFFIC)
    assert {a["check"] for a in result.errors} == {"label"}
    assert len(result.errors) == 3
    one_class = [dict(r, congested=0) for r in clean]
    result = validate(one_class, TRAFFIC)
    assert [a["check"] for a in result.errors] == ["label"]
    assert "one class" in result.errors[0]["detail"]


def test_drift_beyond_threshold_is_a_warning_unless_blocking(clean):
    previous = compute_statistics(clean, TRAFFIC)
    # Traffic moved to the highways (in range, valid rows): road_type L-inf ~0.8.
    shifted = [dict(r, road_type="highway") if i % 5 else r for i, r in enumerate(clean)]
    result = validate(shifted, TRAFFIC, previous)
    assert result.ok
    assert ("drift", "road_type") in _checks(result, "warning")
    assert result.drift["road_type"]["metric"] == "l_infinity"
    assert result.drift["road_type"]["distance"] > 0.25
    strict = validate(shifted, TRAFFIC, previous, block_on_drift=True)
    assert not strict.ok and ("drift", "road_type") in _checks(strict)
    # A numeric shift: speeds halved (still in range) -> Jensen-Shannon distance.
    slow = [dict(r, mean_speed_kmh=r["mean_speed_kmh"] / 4) for r in clean]
    result = validate(slow, TRAFFIC, previous, block_on_drift=True)
    assert result.drift["mean_speed_kmh"]["metric"] == "jensen_shannon_distance"
    assert ("drift", "mean_speed_kmh") in _checks(result)


def test_huge_drift_and_stuck_feeds_block(clean):
    previous = compute_statistics(clean, TRAFFIC)
    moved = [dict(r, mean_speed_kmh=199.0 - r["hour_of_day"]) for r in clean]
    result = validate(moved, TRAFFIC, previous)
    assert result.drift["mean_speed_kmh"]["distance"] > 0.75
    assert ("drift", "mean_speed_kmh") in _checks(result)
    stuck = [dict(r, vehicle_count=0) for r in clean]
    result = validate(stuck, TRAFFIC, previous)
    assert not result.ok
    assert ("degenerate_feature", "vehicle_count") in _checks(result)
    assert validate(stuck, TRAFFIC, previous, drift_block_threshold=None).ok is False


def test_a_clock_feature_is_not_compared_for_drift_but_still_validated(clean):
    previous = compute_statistics(clean, TRAFFIC)
    # The next window covers other hours of the day: expected, not drift.
    later = [dict(r, hour_of_day=(r["hour_of_day"] + 12) % 24) for r in clean]
    result = validate(later, TRAFFIC, previous)
    assert result.ok, result.anomalies
    assert "hour_of_day" not in result.drift
    assert "vehicle_count" in result.drift  # the other features still are
    # Its domain and a stuck clock are still errors.
    broken = [dict(r, hour_of_day=25.0) if i == 0 else r for i, r in enumerate(later)]
    assert ("out_of_domain", "hour_of_day") in _checks(validate(broken, TRAFFIC, previous))
    stuck = [dict(r, hour_of_day=3.0) for r in clean]
    assert ("degenerate_feature", "hour_of_day") in _checks(validate(stuck, TRAFFIC, previous))


def test_concept_drift_alone_does_not_block():
    before = training_rows(2000, rate=2.0)
    after = training_rows(2000, rate=2.0, end=1_700_010_000.0, drift=True)
    assert sum(r["congested"] for r in after) > sum(r["congested"] for r in before)
    result = validate(after, TRAFFIC, compute_statistics(before, TRAFFIC))
    assert result.ok, result.anomalies
    assert max(d["distance"] for d in result.drift.values()) < 0.25


def test_distances():
    assert jensen_shannon_distance([1, 0], [1, 0]) == 0.0
    assert jensen_shannon_distance([1, 0], [0, 1]) == pytest.approx(1.0)
    assert jensen_shannon_distance([0, 0], [1, 0]) is None
    assert l_infinity_distance({"a": 1.0}, {"a": 0.5, "b": 0.5}) == 0.5
    assert l_infinity_distance({}, {"a": 1.0}) is None


def test_every_check_is_documented():
    import trainer.validation as v

    for check in CHECKS:
        assert f"``{check}``" in v.__doc__
