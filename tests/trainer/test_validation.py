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
    assert [a["check"] for a in result.errors] == ["single_class"]
    assert "one class" in result.errors[0]["detail"]
    relaxed = _with(TRAFFIC, validation={"severity": {"single_class": "warn"}})
    assert validate(one_class, relaxed).ok


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
    assert result.drift["mean_speed_kmh"]["outside_share"] > 0.5
    assert ("severe_drift", "mean_speed_kmh") in _checks(result)
    stuck = [dict(r, vehicle_count=0) for r in clean]
    result = validate(stuck, TRAFFIC, previous)
    assert not result.ok
    assert ("degenerate_feature", "vehicle_count") in _checks(result)
    assert validate(stuck, TRAFFIC, previous, drift_block_threshold=None).ok is False
    # Without a reference nothing says it varied before: a warning only.
    first = validate(stuck, TRAFFIC)
    assert first.ok and ("constant_feature", "vehicle_count") in _checks(first, "warning")


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


# ------------------------------------------------- false positives (issue 9, item 5)


def _with(config, **changes):
    """A config like ``config`` with top-level or retraining changes (via the loader)."""
    import yaml

    raw = yaml.safe_load(open(config.source_path))
    for key, value in changes.items():
        if key in ("drift_threshold", "training_window_rows"):
            raw["retraining"][key] = value
        elif key == "hour_drift_check":
            raw["features"]["hour_of_day"]["drift_check"] = value
        else:
            raw[key] = value
    return config_from_dict(raw, source=config.source_path)


def test_float_noise_is_not_variation(clean):
    """The real-dataset case: a constant column whose std was 1.11e-16 is not a stuck feed."""
    before = [dict(r, occupancy=0.422915) for r in clean]  # 600 rows
    previous = compute_statistics(before, TRAFFIC)
    assert previous["features"]["occupancy"]["std"] == pytest.approx(1.11e-16, rel=0.01)
    now = before[:400]  # the same constant; here numpy's std is exactly 0.0
    assert compute_statistics(now, TRAFFIC)["features"]["occupancy"]["std"] == 0.0
    result = validate(now, TRAFFIC, previous)
    assert result.ok, result.errors
    assert ("constant_feature", "occupancy") in _checks(result, "warning")
    # Float noise in the current window does not make it "varied" either.
    again = validate(before, TRAFFIC, compute_statistics(now, TRAFFIC))
    assert again.ok and ("constant_feature", "occupancy") in _checks(again, "warning")


def test_constant_in_the_reference_too_is_a_warning(clean):
    constant = [dict(r, road_type="local") for r in clean]
    result = validate(constant, TRAFFIC, compute_statistics(constant, TRAFFIC))
    assert result.ok and ("constant_feature", "road_type") in _checks(result, "warning")
    # One that varied before is still a stuck feed.
    stuck = validate(constant, TRAFFIC, compute_statistics(clean, TRAFFIC))
    assert ("degenerate_feature", "road_type") in _checks(stuck)


def test_small_windows_of_one_distribution_are_not_drift():
    """Two 200-row samples differ by chance more than a 0.1 threshold; that is noise."""
    config = _with(TRAFFIC, drift_threshold=0.1)
    import random

    rows = training_rows(400, rate=2.0)
    random.Random(0).shuffle(rows)  # two random halves: one distribution
    before, after = rows[:200], rows[200:]
    result = validate(after, config, compute_statistics(before, config), block_on_drift=True)
    assert result.ok, result.errors
    for d in result.drift.values():
        assert d["noise_floor"] > 0.1
    # A real shift of the same windows is still found.
    slow = [dict(r, mean_speed_kmh=r["mean_speed_kmh"] / 4) for r in after]
    strict = validate(slow, config, compute_statistics(before, config), block_on_drift=True)
    assert ("drift", "mean_speed_kmh") in _checks(strict)


def test_noise_floor_is_about_the_99th_percentile():
    import numpy as np

    from trainer.statistics import noise_floor

    rng = np.random.default_rng(0)
    probs = np.full(12, 1 / 12)
    above = 0
    for _ in range(300):
        p = rng.multinomial(300, probs)
        q = rng.multinomial(500, probs)
        floor = noise_floor("jensen_shannon_distance", 300, 500, 12)
        above += jensen_shannon_distance(p, q) > floor
    assert above <= 9  # ~1% expected
    assert noise_floor("jensen_shannon_distance", 100_000, 100_000, 12) < 0.02


def test_a_clock_feature_needs_no_drift_opt_out():
    """Consecutive short windows cover other hours; the lineage's reference covers the day."""
    config = _with(TRAFFIC, hour_drift_check=True)
    rows = training_rows(3000, rate=2.0)  # 1,200 rows per simulated day
    history, later = rows[:1200], rows[1200:]
    result = validate(history, config)
    assert result.ok
    stats = result.statistics
    for start in range(0, 1200, 200):  # six 4-hour windows, one after another
        window = later[start : start + 200]
        result = validate(window, config, stats, min_rows=100)
        assert result.ok, (start, result.errors)
        stats = result.statistics
    # A broken clock (far outside the reference's range) still blocks.
    broken = [dict(r, hour_of_day=23.9) for r in later[:200]]
    assert not validate(broken, config, stats, min_rows=100).ok


def test_the_reference_merges_and_is_capped(clean):
    from trainer import statistics as st

    first = validate(clean, TRAFFIC).statistics
    assert first["reference"]["rows"] == 600
    second = validate(clean, TRAFFIC, first).statistics
    ref = second["reference"]["features"]
    assert second["reference"]["rows"] == 1200
    assert sum(ref["vehicle_count"]["histogram"]["counts"]) == 1200
    assert sum(ref["road_type"]["frequencies"].values()) == pytest.approx(1.0)
    json.dumps(second)
    big = dict(first, reference=dict(first["reference"], rows=st.REFERENCE_MAX_ROWS))
    assert validate(clean, TRAFFIC, big).statistics["reference"]["rows"] == st.REFERENCE_MAX_ROWS


def test_severity_overrides_from_the_config(clean):
    stuck = [dict(r, vehicle_count=0) for r in clean]
    previous = compute_statistics(clean, TRAFFIC)
    relaxed = _with(TRAFFIC, validation={"severity": {"degenerate_feature": "warn"}})
    result = validate(stuck, relaxed, previous)
    assert result.ok and ("degenerate_feature", "vehicle_count") in _checks(result, "warning")
    strict = _with(TRAFFIC, validation={"severity": {"constant_feature": "block"}})
    assert not validate(stuck, strict).ok
    for bad, match in [
        ({"severity": {"nope": "warn"}}, "unknown check"),
        ({"severity": {"drift": "error"}}, "must be one of block, warn"),
        ({"severities": {}}, "unknown setting"),
    ]:
        with pytest.raises(ValueError, match=match):
            _with(TRAFFIC, validation=bad)
    assert TRAFFIC.validation.severity == ()


def test_every_check_has_a_documented_default_severity():
    import trainer.validation as v

    assert set(v.DEFAULT_SEVERITY) == set(CHECKS)
    for check, level in v.DEFAULT_SEVERITY.items():
        assert f"``{check}``" in v.__doc__ and level in ("block", "warn")


def _mutated(clean, change):
    rows = [dict(r) for r in clean]
    change(rows)
    return rows


MUTATIONS = {
    "clean": lambda rows: None,
    "missing": lambda rows: [r.pop("occupancy") for r in rows],
    "nulls": lambda rows: [r.update(road_type=None) for r in rows],
    "unexpected": lambda rows: [r.update(weather="rain") for r in rows[::10]],
    "out_of_domain": lambda rows: (
        rows[1].update(occupancy=3.5),
        rows[2].update(vehicle_count=-4),
        rows[3].update(road_type="motorway"),
        rows[4].update(mean_speed_kmh=-1e9),
    ),
    "low_presence": lambda rows: [r.update(hour_of_day=None) for r in rows[:30]],
    "labels": lambda rows: (rows[0].update(congested=None), rows[1].update(congested=2)),
    "one_class": lambda rows: [r.update(congested=0) for r in rows],
    "stuck": lambda rows: [r.update(mean_speed_kmh=50.0, road_type="local") for r in rows],
    "drifted": lambda rows: [r.update(occupancy=r["occupancy"] / 3) for r in rows],
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_column_wise_validation_finds_what_the_rows_show(clean, tmp_path, name):
    """A RowTable (the trainer's columns) validates exactly like the same rows as dicts."""
    from trainer.data import RowTable, read_training_file, select_window, write_training_file

    rows = _mutated(clean, MUTATIONS[name])
    path = str(tmp_path / "rows.jsonl")
    write_training_file(path, rows)
    table = read_training_file(path, TRAFFIC, rows=len(rows))
    listed = select_window(rows, TRAFFIC, len(rows))
    assert isinstance(table, RowTable)
    reference = validate(clean[:300], TRAFFIC).statistics
    for previous in (None, reference):
        got, want = validate(table, TRAFFIC, previous), validate(listed, TRAFFIC, previous)
        assert got.anomalies == want.anomalies
        assert json.dumps(got.statistics, sort_keys=True) == json.dumps(
            want.statistics, sort_keys=True
        )
        assert got.drift == want.drift
