"""Tests of the traffic simulator: determinism, ranges, rhythm, incidents, drift."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from dataset.config import load_config
from simulator.traffic import (
    ROAD_TYPES,
    TrafficSimulator,
    daily_demand,
    format_iso_millis,
)
from tests.simulator import checks

TRAFFIC = load_config("configs/traffic.yaml")
T0 = 1_699_999_800.0  # a multiple of 600: simulated midnight for day_seconds=600


def _feature_matrix(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    x = np.array(
        [
            [r["vehicle_count"], r["mean_speed_kmh"], r["occupancy"], r["hour_of_day"]]
            + [float(r["road_type"] == t) for t in ROAD_TYPES]
            for r in rows
        ],
        dtype=float,
    )
    y = np.array([r["congested"] for r in rows], dtype=float)
    return x, y


def _fit_logistic(x: np.ndarray, y: np.ndarray, steps: int = 400, lr: float = 0.5):
    """Plain numpy logistic regression (standardized features, gradient descent)."""
    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-9

    def design(a: np.ndarray) -> np.ndarray:
        return np.c_[(a - mu) / sd, np.ones(len(a))]

    z = design(x)
    w = np.zeros(z.shape[1])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(z @ w)))
        w -= lr * z.T @ (p - y) / len(y)
    return lambda a: (design(a) @ w > 0).astype(float)


def test_same_seed_same_output_and_different_seed_differs():
    a = TrafficSimulator(seed=7).history(500, T0, rate=5)
    b = TrafficSimulator(seed=7).history(500, T0, rate=5)
    c = TrafficSimulator(seed=8).history(500, T0, rate=5)
    assert a == b
    assert json.dumps(a) == json.dumps(b)
    assert a != c


def test_chunked_readings_equal_one_call():
    sim = TrafficSimulator(n_sensors=50)
    whole = list(sim.readings(T0, T0 + 10, rate=30))
    parts = []
    for lo in np.arange(T0, T0 + 10, 0.37):
        parts += sim.readings(float(lo), float(min(lo + 0.37, T0 + 10)), rate=30)
    assert len(whole) == 300
    assert parts == whole


def test_history_ends_before_end_time_and_is_ordered():
    sim = TrafficSimulator()
    events = sim.history_events(100, T0 + 0.05, rate=10)
    assert len(events) == 100
    times = [t for t, _ in events]
    assert times == sorted(times)
    assert times[-1] < T0 + 0.05 and times[-1] == pytest.approx(T0)
    assert events[-1][1]["event_time"] == format_iso_millis(T0)


def test_readings_match_config_fields_types_and_ranges():
    sim = TrafficSimulator(seed=3)
    rows = sim.history(6000, T0, rate=5)  # two simulated days
    expected = {
        TRAFFIC.key_field,
        TRAFFIC.event_time_field,
        TRAFFIC.label.field,
        *TRAFFIC.feature_names,
    }
    for r in rows:
        assert set(r) == expected
        assert checks.problems(json.dumps(r).encode(), TRAFFIC) == [], r
        assert re.fullmatch(r"S\d{4}", r["sensor_id"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["event_time"])
        assert type(r["vehicle_count"]) is int
        assert type(r["mean_speed_kmh"]) is float and type(r["occupancy"]) is float
        assert 0.0 <= r["hour_of_day"] < 24.0
        assert r["congested"] in (0, 1)
    for spec in TRAFFIC.numeric_features:
        values = [r[spec.name] for r in rows]
        assert min(values) >= spec.min and max(values) <= spec.max, spec.name
    assert {r["road_type"] for r in rows} == set(TRAFFIC.feature("road_type").values)
    labels = [r["congested"] for r in rows]
    assert 0.05 < sum(labels) / len(labels) < 0.4


def test_every_sensor_reports_once_per_cycle():
    sim = TrafficSimulator(n_sensors=300)
    rows = list(sim.readings(T0, T0 + 10, rate=30))
    ids = [r["sensor_id"] for r in rows]
    assert sorted(ids) == [f"S{i:04d}" for i in range(1, 301)]
    # A sensor keeps its road type.
    more = list(sim.readings(T0 + 10, T0 + 20, rate=30))
    road = {r["sensor_id"]: r["road_type"] for r in rows}
    assert all(road[r["sensor_id"]] == r["road_type"] for r in more)


def test_hour_of_day_follows_the_compressed_day():
    sim = TrafficSimulator(day_seconds=600)
    assert sim.hour_of_day(T0) == 0.0
    assert sim.hour_of_day(T0 + 150) == pytest.approx(6.0)
    assert sim.hour_of_day(T0 + 450) == pytest.approx(18.0)
    assert sim.hour_of_day(T0 + 600) == 0.0
    assert sim.hour_of_day(T0 - 1e-9) < 24.0
    fast = TrafficSimulator(day_seconds=60)
    assert fast.hour_of_day(T0 + 30) == pytest.approx(12.0)


def test_day_origin_shifts_the_simulated_clock():
    sim = TrafficSimulator(day_seconds=600, day_origin=T0 + 125)
    assert sim.hour_of_day(T0 + 125) == 0.0
    assert sim.hour_of_day(T0 + 250) == pytest.approx(5.0)
    assert sim.hour_of_day(T0) == pytest.approx(19.0)  # the day before
    # Same origin, same readings: a publisher and a history generator agree.
    twin = TrafficSimulator(day_seconds=600, day_origin=T0 + 125)
    assert twin.reading(7, T0 + 260) == sim.reading(7, T0 + 260)


def test_daily_rhythm_rush_hours_are_busier_than_night():
    assert daily_demand(8.0) > 3 * daily_demand(3.0)
    assert daily_demand(17.5) > daily_demand(12.5) > daily_demand(3.0)
    rows = TrafficSimulator(seed=5).history(9000, T0, rate=5)  # three simulated days

    def mean(field, lo, hi):
        sel = [r[field] for r in rows if lo <= r["hour_of_day"] < hi]
        return sum(sel) / len(sel)

    for field in ("occupancy", "congested"):
        assert mean(field, 7.0, 9.0) > 2 * mean(field, 0.0, 4.0), field
        assert mean(field, 16.5, 18.5) > 2 * mean(field, 0.0, 4.0), field
    assert mean("vehicle_count", 7.0, 9.0) > 2 * mean("vehicle_count", 0.0, 4.0)
    assert mean("mean_speed_kmh", 7.0, 9.0) < mean("mean_speed_kmh", 0.0, 4.0)


def test_incidents_slow_traffic_and_cause_congestion():
    calm = TrafficSimulator(seed=9, incident_rate=0.0).history(3000, T0, rate=5)
    chaos = TrafficSimulator(seed=9, incident_rate=1.0).history(3000, T0, rate=5)

    def avg(rows, f):
        return sum(r[f] for r in rows) / len(rows)

    assert avg(chaos, "mean_speed_kmh") < 0.8 * avg(calm, "mean_speed_kmh")
    assert avg(chaos, "occupancy") > avg(calm, "occupancy") + 0.15
    assert avg(chaos, "congested") > avg(calm, "congested") + 0.3
    # With the default rate, a few percent of (sensor, half hour) slots have one.
    sim = TrafficSimulator(seed=9)
    hits = [sim.incident(s, T0 + 12.5 * j) > 0 for s in sim.sensors for j in range(20)]
    assert 0.01 < sum(hits) / len(hits) < 0.06


def test_drift_switches_on_at_the_scheduled_time():
    sim = TrafficSimulator(drift_after_seconds=300, start_time=T0)
    assert sim.drift_time == T0 + 300
    assert not sim.is_drifted(T0 + 299.999)
    assert sim.is_drifted(T0 + 300)
    assert TrafficSimulator().drift_time is None
    assert not TrafficSimulator().is_drifted(1e12)


def test_drift_breaks_a_pre_drift_model_and_refit_recovers():
    drift_at = T0 + 3000
    sim = TrafficSimulator(seed=7, drift_after_seconds=3000, start_time=T0)
    # Five whole simulated days on each side of the drift (3 readings/s, 600 s days).
    pre = sim.history(9000, drift_at, rate=3)
    post = sim.history(9000, drift_at + 3000, rate=3)
    assert not sim.is_drifted(drift_at - 0.001) and sim.is_drifted(drift_at)
    xa, ya = _feature_matrix(pre)
    xb, yb = _feature_matrix(post)
    # The features keep their distribution: this is concept drift, not covariate shift.
    assert abs(xa[:, 2].mean() - xb[:, 2].mean()) < 0.02
    assert ya.mean() + 0.2 < yb.mean()  # the same traffic is congested far more often

    old = _fit_logistic(xa[::2], ya[::2])
    acc_before = float((old(xa[1::2]) == ya[1::2]).mean())
    acc_old_after = float((old(xb[1::2]) == yb[1::2]).mean())
    new = _fit_logistic(xb[::2], yb[::2])
    acc_refit = float((new(xb[1::2]) == yb[1::2]).mean())

    assert acc_before > 0.9
    assert acc_before - acc_old_after >= 0.10, (acc_before, acc_old_after)
    assert acc_old_after < 0.75  # below a 0.7-ish quality floor region
    assert acc_refit > acc_old_after + 0.10
    assert acc_refit > 0.88


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="n_sensors"):
        TrafficSimulator(n_sensors=0)
    with pytest.raises(ValueError, match="day_seconds"):
        TrafficSimulator(day_seconds=0)
    with pytest.raises(ValueError, match="drift_after_seconds"):
        TrafficSimulator(drift_after_seconds=-1)
    with pytest.raises(ValueError, match="rate"):
        list(TrafficSimulator().readings(T0, T0 + 1, rate=0))
