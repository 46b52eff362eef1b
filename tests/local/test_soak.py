"""The soak drill's pure parts: RSS growth after warm-up, events rebuilt from training rows."""

from __future__ import annotations

import datetime as dt

import pytest

from local.soak import (
    events_from_training_rows,
    rss_growth,
    state_horizon_seconds,
    trace_summary,
)
from tests.helpers import TRAFFIC
from transforms.validation import validate_payload


def test_rss_growth_is_measured_after_the_warmup_only():
    # 0-120 s: warm-up from 300 to 800 MiB; then 800 MiB rising by 1 MiB a minute.
    samples = [(t, 300 + 500 * t / 120) for t in range(0, 120, 10)]
    samples += [(t, 800 + (t - 120) / 60) for t in range(120, 600, 10)]
    growth = rss_growth(samples, warmup_s=120)
    assert growth["growth_mib_per_minute"] == pytest.approx(1.0, abs=0.1)
    assert growth["first_minute_median_mib"] < growth["last_minute_median_mib"] < 809
    assert growth["slope_mib_per_minute"] == pytest.approx(1.0, abs=0.01)
    assert rss_growth(samples[:13], warmup_s=120) == {"samples_after_warmup": 1}


def test_rss_growth_takes_samples_with_the_load_average():
    samples = [(t, 800.0, 3.5) for t in range(0, 600, 10)]
    growth = rss_growth(samples, warmup_s=120)
    assert growth["growth_mib_per_minute"] == 0 and growth["slope_mib_per_minute"] == 0


def test_the_state_horizon_is_the_longest_state_the_pipeline_keeps_by_design():
    from transforms.aggregation import LATE_FIRING_DELAY_SECONDS

    assert state_horizon_seconds(TRAFFIC, []) == 600  # the default dedup window
    windows = max(s.size_seconds + s.allowed_lateness_seconds for s in TRAFFIC.windows)
    windows += LATE_FIRING_DELAY_SECONDS
    for args in (["--dedup_window_seconds", "60"], ["--dedup_window_seconds=60"]):
        assert state_horizon_seconds(TRAFFIC, args) == max(
            windows, 2 * TRAFFIC.evaluation_window_seconds + LATE_FIRING_DELAY_SECONDS
        )
    assert state_horizon_seconds(TRAFFIC, ["--dedup_window_seconds", "5000"]) == 5000


def test_the_trace_summary_reads_the_memory_trace(tmp_path):
    import json

    step = {"step": "A", "keys": 3, "windows": 0, "timers": 0, "values": 0}
    records = [
        {"t": 30, "rss_mib": 700, "gc_objects": 10, "malloc": None, "runner_state": [step]},
        {"t": 60, "rss_mib": 700, "gc_objects": 10, "malloc": None, "baseline": True,
         "runner_state": [{**step, "keys": 9}]},
        {"t": 120, "rss_mib": 702, "gc_objects": 12, "malloc": None, "runner_state": [step]},
    ]  # fmt: skip
    path = tmp_path / "memory-trace.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = trace_summary(path)
    assert summary["rss_mib_per_min"] == 2.0
    assert summary["runner_state_peak_keys"] == [9, 60] or summary["runner_state_peak_keys"] == (
        9,
        60,
    )
    assert summary["runner_state_last"] == [step]
    assert trace_summary(tmp_path / "missing.jsonl") is None


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
