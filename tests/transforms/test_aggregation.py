import math

import apache_beam as beam
import pytest
from apache_beam.coders.coders import IntervalWindowCoder
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to, equal_to_per_window
from apache_beam.transforms import trigger
from apache_beam.transforms.window import IntervalWindow, NonMergingWindowFn, TimestampedValue

from dataset.config import config_from_dict
from dataset.times import parse_event_time
from tests.helpers import T0, TRAFFIC, traffic_payload
from transforms.aggregation import (
    LATE_FIRING_DELAY_SECONDS,
    WindowAndAggregate,
    add_record,
    empty_accumulator,
    merge_accumulators,
    partial_lateness,
    partial_period,
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


# TestStream's processing-time clock starts at 0 (1970). The legacy runner
# compares a processing-time firing's time with the window's end to label the
# pane (EARLY before it) and to release watermark holds, so tests with late
# firings first move that clock past the events, as a real clock would be.
WALL_CLOCK_START = T0 + 3600


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
    """Two windows fire on time. Three late elements that arrive within one
    late-firing delay update their window in ONE accumulated LATE pane; a later
    late element makes a second LATE pane; an element beyond the allowed
    lateness does not reopen the window."""
    config = _fixed_only_config(lateness=120)

    def rec(t, v):
        return TimestampedValue(_record("S1", t, vehicle_count=v), t)

    stream = (
        TestStream()
        .advance_processing_time(WALL_CLOCK_START)
        .advance_watermark_to(T0)
        .add_elements([rec(T0 + 5, 10), rec(T0 + 50, 20), rec(T0 + 70, 7)])
        .advance_watermark_to(T0 + 125)  # both windows closed, still within lateness
        .add_elements([rec(T0 + 30, 30)])
        .add_elements([rec(T0 + 40, 40)])
        .advance_processing_time(LATE_FIRING_DELAY_SECONDS / 2)
        .add_elements([rec(T0 + 45, 45)])
        .advance_processing_time(LATE_FIRING_DELAY_SECONDS)  # one LATE pane for all three
        .add_elements([rec(T0 + 20, 50)])
        .advance_processing_time(LATE_FIRING_DELAY_SECONDS + 1)
        .advance_watermark_to(T0 + 400)  # w1 past its allowed lateness
        .add_elements([rec(T0 + 41, 99)])
        .advance_processing_time(LATE_FIRING_DELAY_SECONDS + 1)
        .advance_watermark_to_infinity()
    )
    with TestPipeline(options=_streaming_options()) as p:
        rows = p | stream | WindowAndAggregate(config)
        summary = rows | beam.Map(
            lambda r: (r["pane_timing"], r["pane_index"], r["event_count"], r["vehicle_count_max"])
        )
        assert_that(
            summary | "Window1" >> beam.WindowInto(beam.window.GlobalWindows()),
            equal_to(
                [
                    ("ON_TIME", 0, 2, 20.0),
                    ("ON_TIME", 0, 1, 7.0),
                    ("LATE", 1, 5, 45.0),
                    ("LATE", 2, 6, 50.0),
                ]
            ),
        )


def test_late_firing_delay_must_be_positive():
    with pytest.raises(ValueError, match="late_firing_delay_seconds"):
        WindowAndAggregate(TRAFFIC, late_firing_delay_seconds=0)


class _WindowOfRow(NonMergingWindowFn):
    """Puts an aggregate row back into the window its columns name."""

    def assign(self, context):
        row = context.element
        start = parse_event_time(row["window_start"], "iso8601")
        return [IntervalWindow(start, parse_event_time(row["window_end"], "iso8601"))]

    def get_window_coder(self):
        return IntervalWindowCoder()


def test_rows_per_window_with_equal_to_per_window():
    """WindowAndAggregate's rows, put back into the windows they name, hold each
    key's events of exactly that window: fixed 1 m and sliding 5 m every 1 m."""
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
    expected = {
        IntervalWindow(T0, T0 + 60): [("fixed_1m", "S1", 1, 0), ("fixed_1m", "S2", 1, 0)],
        IntervalWindow(T0 + 60, T0 + 120): [("fixed_1m", "S1", 1, 0)],
        # Sliding windows [s, s + 300) for s every 60 s: T0 + 1 and T0 + 2 fall
        # in s = T0 - 240 .. T0; T0 + 61 in s = T0 - 180 .. T0 + 60.
        IntervalWindow(T0 - 240, T0 + 60): [("sliding_5m", "S1", 1, 0), ("sliding_5m", "S2", 1, 0)],
        **{
            IntervalWindow(T0 + k * 60, T0 + k * 60 + 300): [
                ("sliding_5m", "S1", 2, 0),
                ("sliding_5m", "S2", 1, 0),
            ]
            for k in (-3, -2, -1, 0)
        },
        IntervalWindow(T0 + 60, T0 + 360): [("sliding_5m", "S1", 1, 0)],
    }
    with TestPipeline(options=_streaming_options()) as p:
        rows = p | stream | WindowAndAggregate(TRAFFIC)
        assert_that(
            rows
            | "WindowOfRow" >> beam.WindowInto(_WindowOfRow())
            | beam.Map(
                lambda r: (r["window_name"], r["sensor_id"], r["event_count"], r["pane_index"])
            ),
            equal_to_per_window(expected),
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


def _row_key(row):
    return (row["window_name"], row["sensor_id"], row["window_start"], row["pane_index"])


def _differences(keyed):
    """(row key, {"direct": [...], "partials": [...]}) -> the key if the rows differ."""
    key, sides = keyed

    def strip(rows):
        return sorted(
            tuple(sorted((k, v) for k, v in r.items() if k != "computed_at")) for r in rows
        )

    if strip(sides["direct"]) != strip(sides["partials"]):
        yield key


def test_windows_from_fixed_window_partials_make_the_same_rows():
    """Sliding windows combined from 1-minute partials give the rows that
    windowing every event into every window gives: on time, late within a
    window's lateness (also events their fixed window has already dropped but
    a later-ending sliding window still takes), throttled late panes, and an
    event too late for every window."""

    def rec(key, t, v):
        return TimestampedValue(_record(key, t, vehicle_count=v, occupancy=v / 64), t)

    stream = TestStream().advance_processing_time(WALL_CLOCK_START).advance_watermark_to(T0)
    for minute in range(7):
        t = T0 + 60 * minute
        stream = stream.add_elements(
            [rec("S1", t + 5, minute), rec("S2", t + 20, 2 * minute), rec("S1", t + 59, 3)]
        ).advance_watermark_to(t + 60)
    stream = (
        # Watermark at T0 + 420. S3 (a new key): its fixed window and 3 sliding
        # windows are late, 2 sliding windows are still open. S1 at +130 and +30:
        # past their fixed window's lateness, not past every sliding window's.
        stream.add_elements([rec("S3", T0 + 250, 9), rec("S1", T0 + 130, 11)])
        .add_elements([rec("S1", T0 + 30, 13), rec("S1", T0 - 30, 15)])  # -30: too late
        .advance_processing_time(LATE_FIRING_DELAY_SECONDS / 2)
        .add_elements([rec("S1", T0 + 300, 17)])
        .advance_processing_time(LATE_FIRING_DELAY_SECONDS)
        .add_elements([rec("S2", T0 + 310, 19)])
        .advance_processing_time(LATE_FIRING_DELAY_SECONDS + 1)
        .advance_watermark_to_infinity()
    )
    with TestPipeline(options=_streaming_options()) as p:
        events = p | stream
        direct = events | "Direct" >> WindowAndAggregate(TRAFFIC, partials=False)
        partial = events | "Partials" >> WindowAndAggregate(TRAFFIC, partials=True)
        at_end = beam.WindowInto(
            beam.window.GlobalWindows(),
            trigger=trigger.AfterWatermark(),
            accumulation_mode=trigger.AccumulationMode.DISCARDING,
        )
        grouped = {
            "direct": direct
            | "KeyDirect" >> beam.Map(lambda r: (_row_key(r), r))
            | "AtEndDirect" >> at_end,
            "partials": partial
            | "KeyPartials" >> beam.Map(lambda r: (_row_key(r), r))
            | "AtEndPartials" >> at_end,
        } | beam.CoGroupByKey()
        assert_that(grouped | beam.FlatMap(_differences), equal_to([]), label="SameRows")
        assert_that(
            direct
            | "Panes" >> beam.Map(lambda r: (r["window_name"], r["pane_timing"]))
            | "AtEndPanes" >> at_end
            | beam.combiners.Count.PerElement(),
            equal_to(
                [
                    (("fixed_1m", "ON_TIME"), 7 + 7),
                    (("fixed_1m", "LATE"), 3),  # S3 at +250; S1, S2 at +300..359
                    (("sliding_5m", "ON_TIME"), 11 + 11 + 2),
                    # S3: 3 windows; S1: 3 windows (+130, +30 and +300 share
                    # panes); S2: 2 windows.
                    (("sliding_5m", "LATE"), 3 + 3 + 2),
                ]
            ),
            label="PaneCounts",
        )


def test_which_windows_are_combined_from_partials():
    from dataset.config import WindowSpec

    fixed = WindowSpec("f", "fixed", 60, None, 120)
    sliding = WindowSpec("s", "sliding", 300, 60, 120)
    uneven = WindowSpec("u", "sliding", 300, 120, 0)
    assert (partial_period(fixed), partial_period(sliding), partial_period(uneven)) == (
        60,
        60,
        None,
    )
    # A late element at the start of a 1-minute partial still belongs to a
    # sliding window that ends 300 s later and takes late data 120 s more.
    assert partial_lateness([fixed, sliding], 60) == 300 + 120 - 60
    assert partial_lateness([fixed], 60) == 120


def _step_labels(config):
    p = beam.Pipeline()
    _ = p | beam.Create([]) | WindowAndAggregate(config)
    labels = []

    class Visitor(beam.pipeline.PipelineVisitor):
        def enter_composite_transform(self, node):
            labels.append(node.full_label)

        def visit_transform(self, node):
            labels.append(node.full_label)

    p.visit(Visitor())
    return labels


def test_partials_only_where_sliding_windows_overlap():
    from tests.helpers import ADS

    traffic = _step_labels(TRAFFIC)
    assert "WindowAndAggregate/PartialWindow60s" in traffic
    assert {"WindowAndAggregate/WindowFixed1m", "WindowAndAggregate/WindowSliding5m"} <= set(
        traffic
    )
    ads = _step_labels(ADS)  # one fixed window: windowed directly
    assert not any("Partial" in label for label in ads)
    assert "WindowAndAggregate/WindowFixed10m" in ads
