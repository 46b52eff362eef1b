import math

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to, equal_to_per_window
from apache_beam.transforms.window import IntervalWindow, TimestampedValue

from dataset.config import config_from_dict
from tests.helpers import T0, TRAFFIC, traffic_payload
from transforms.aggregation import (
    WindowAndAggregate,
    add_record,
    empty_accumulator,
    merge_accumulators,
    summarize,
)
from transforms.validation import validate_payload


def _record(sensor, t, **kw):
    return validate_payload(traffic_payload(sensor, t, **kw), TRAFFIC, f"{sensor}@{t}")


def test_stats_are_exact_and_merge_like_a_single_pass():
    names = ("vehicle_count", "occupancy")
    records = [
        _record("S1", T0 + i, vehicle_count=v, congested=i % 2) for i, v in enumerate([2, 4, 9])
    ]
    whole = empty_accumulator(names)
    for r in records:
        add_record(whole, r)
    a, b = empty_accumulator(names), empty_accumulator(names)
    add_record(a, records[0])
    for r in records[1:]:
        add_record(b, r)
    merged = merge_accumulators([a, b], names)
    out = summarize(merged, with_label=True)
    assert out == summarize(whole, with_label=True)
    assert out["event_count"] == 3
    assert out["vehicle_count_mean"] == pytest.approx(5.0)
    assert (out["vehicle_count_min"], out["vehicle_count_max"]) == (2.0, 9.0)
    assert out["vehicle_count_std"] == pytest.approx(math.sqrt(((3**2) + 1 + 16) / 3))
    assert out["label_mean"] == pytest.approx(1 / 3) and out["labeled_count"] == 3


def _streaming_options():
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    return options


def _fixed_only_config(lateness: int):
    import yaml

    with open("configs/traffic.yaml") as f:
        raw = yaml.safe_load(f)
    raw["windows"] = {
        "allowed_lateness_seconds": lateness,
        "specs": [{"name": "fixed_1m", "kind": "fixed", "size_seconds": 60}],
    }
    return config_from_dict(raw)


def test_on_time_and_late_panes_per_window():
    """Two windows fire on time; a late element updates its window in a LATE pane;
    an element beyond the allowed lateness does not reopen a window."""
    config = _fixed_only_config(lateness=120)
    stream = (
        TestStream()
        .advance_watermark_to(T0)
        .add_elements([TimestampedValue(_record("S1", T0 + 5, vehicle_count=10), T0 + 5)])
        .add_elements([TimestampedValue(_record("S1", T0 + 50, vehicle_count=20), T0 + 50)])
        .add_elements([TimestampedValue(_record("S1", T0 + 70, vehicle_count=7), T0 + 70)])
        .advance_watermark_to(T0 + 125)  # both windows closed, still within lateness
        .add_elements([TimestampedValue(_record("S1", T0 + 30, vehicle_count=30), T0 + 30)])
        .advance_watermark_to(T0 + 400)  # w1 past its allowed lateness
        .add_elements([TimestampedValue(_record("S1", T0 + 40, vehicle_count=99), T0 + 40)])
        .advance_watermark_to_infinity()
    )
    with TestPipeline(options=_streaming_options()) as p:
        rows = p | stream | WindowAndAggregate(config)
        summary = rows | beam.Map(
            lambda r: (r["pane_timing"], r["event_count"], r["vehicle_count_max"])
        )
        assert_that(
            summary | "Window1" >> beam.WindowInto(beam.window.GlobalWindows()),
            equal_to([("ON_TIME", 2, 20.0), ("ON_TIME", 1, 7.0), ("LATE", 3, 30.0)]),
        )


def test_rows_per_window_with_equal_to_per_window():
    config = _fixed_only_config(lateness=0)
    stream = (
        TestStream()
        .advance_watermark_to(T0)
        .add_elements(
            [
                TimestampedValue(_record("S1", T0 + 1), T0 + 1),
                TimestampedValue(_record("S2", T0 + 2), T0 + 2),
                TimestampedValue(_record("S1", T0 + 61), T0 + 61),
            ]
        )
        .advance_watermark_to_infinity()
    )
    with TestPipeline(options=_streaming_options()) as p:
        records = p | stream
        counts = (
            records
            | beam.WindowInto(beam.window.FixedWindows(60))
            | beam.Map(lambda r: (r["key"], 1))
            | beam.CombinePerKey(sum)
        )
        assert_that(
            counts,
            equal_to_per_window(
                {
                    IntervalWindow(T0, T0 + 60): [("S1", 1), ("S2", 1)],
                    IntervalWindow(T0 + 60, T0 + 120): [("S1", 1)],
                }
            ),
            label="CountsPerWindow",
        )
        rows = records | WindowAndAggregate(config)
        assert_that(
            rows | beam.Map(lambda r: (r["sensor_id"], r["window_start"], r["pane_index"])),
            equal_to(
                [
                    ("S1", "2023-11-14T22:14:00.000000Z", 0),
                    ("S2", "2023-11-14T22:14:00.000000Z", 0),
                    ("S1", "2023-11-14T22:15:00.000000Z", 0),
                ]
            ),
            label="AggregateRows",
        )


def test_sliding_windows_count_each_event_in_every_overlapping_window():
    stream = (
        TestStream()
        .advance_watermark_to(T0)
        .add_elements([TimestampedValue(_record("S1", T0 + 10), T0 + 10)])
        .advance_watermark_to_infinity()
    )
    with TestPipeline(options=_streaming_options()) as p:
        rows = p | stream | WindowAndAggregate(TRAFFIC)
        assert_that(
            rows | beam.Map(lambda r: r["window_name"]),
            equal_to(["fixed_1m"] + ["sliding_5m"] * 5),
        )
