"""The soak drill's pure parts: RSS growth after warm-up, events rebuilt from training rows."""

from __future__ import annotations

import datetime as dt

import pytest

from local.soak import events_from_training_rows, rss_growth
from tests.helpers import TRAFFIC
from transforms.validation import validate_payload


def test_rss_growth_is_measured_after_the_warmup_only():
    # 0-120 s: warm-up from 300 to 800 MiB; then 800 MiB rising by 1 MiB a minute.
    samples = [(t, 300 + 500 * t / 120) for t in range(0, 120, 10)]
    samples += [(t, 800 + (t - 120) / 60) for t in range(120, 600, 10)]
    growth = rss_growth(samples, warmup_s=120)
    assert growth["growth_mib_per_minute"] == pytest.approx(1.0, abs=0.1)
    assert growth["first_minute_median_mib"] < growth["last_minute_median_mib"] < 809
    assert rss_growth(samples[:13], warmup_s=120) == {"samples_after_warmup": 1}


def test_events_rebuilt_from_training_rows_validate_like_published_ones():
    row = {
        "sensor_id": "S0001",
        "event_time": dt.datetime(2026, 11, 26, 8, 0, tzinfo=dt.UTC),
        "vehicle_count": 42,
        "mean_speed_kmh": 23.5,
        "occupancy": 0.61,
        "hour_of_day": 8.0,
        "road_type": "arterial",
        "congested": 1,
        "example_id": "x",
    }
    (event,) = events_from_training_rows([row], TRAFFIC)
    assert event["event_time"].endswith("Z") and "example_id" not in event
    record = validate_payload(event, TRAFFIC, "m1", None)
    assert record["label"] == 1 and record["key"] == "S0001"
