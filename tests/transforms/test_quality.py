import math

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from tests.helpers import ADS, T0
from tests.transforms.state_doubles import Cell, Timer
from transforms.quality import (
    JOIN_EXPIRY_SLACK_SECONDS,
    JoinPredictionsWithLabels,
    MeasureOnlineQuality,
    _JoinPredictionLabelFn,
    add_scored,
    empty_quality,
    quality_metrics,
)
from transforms.quality import (
    LATE_FIRING_DELAY_SECONDS as QUALITY_LATE_DELAY,
)


def test_classification_metrics():
    acc = empty_quality()
    for p, y in [(0.9, 1), (0.2, 0), (0.6, 0), (0.4, 1)]:
        add_scored(acc, p, y, classification=True)
    out = quality_metrics(acc, classification=True)
    assert out["examples"] == 4
    assert out["accuracy"] == 0.5
    assert out["base_rate"] == 0.5 and out["mean_prediction"] == pytest.approx(0.525)
    expected_ll = -(math.log(0.9) + math.log(0.8) + math.log(0.4) + math.log(0.4)) / 4
    assert out["log_loss"] == pytest.approx(expected_ll)
    assert out["brier"] == pytest.approx((0.01 + 0.04 + 0.36 + 0.36) / 4)


def test_regression_metrics_have_no_accuracy():
    acc = empty_quality()
    add_scored(acc, 3.0, 1.0, classification=False)
    add_scored(acc, 1.0, 1.0, classification=False)
    out = quality_metrics(acc, classification=False)
    assert (
        out["accuracy"] is None and out["mae"] == 1.0 and out["rmse"] == pytest.approx(math.sqrt(2))
    )


def _prediction(example_id, version, p, t):
    return TimestampedValue(
        {"example_id": example_id, "model_version": version, "prediction": p}, t
    )


def _label(example_id, y, t, field):
    return TimestampedValue({"example_id": example_id, field: y}, t)


def _options():
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    return options


def test_late_labels_are_scored_per_model_version():
    """a/b: inline-style (label with prediction). c: label lands 200 s after its
    prediction, scored for the version that predicted it. d: never labeled."""
    stream = (
        TestStream()
        .advance_watermark_to(T0)
        .add_elements([_prediction("a", "v1", 0.9, T0 + 1), _prediction("b", "v1", 0.8, T0 + 2)])
        .add_elements([_label("a", 1, T0 + 1, "converted"), _label("b", 0, T0 + 2, "converted")])
        .add_elements([_prediction("c", "v2", 0.3, T0 + 3), _prediction("d", "v2", 0.7, T0 + 4)])
        .advance_watermark_to(T0 + 200)
        .add_elements([_label("c", 0, T0 + 203, "converted")])
        .advance_watermark_to_infinity()
    )
    with TestPipeline(options=_options()) as p:
        events = p | stream
        predictions = events | "Predictions" >> beam.Filter(lambda r: "model_version" in r)
        labels = events | "Labels" >> beam.Filter(lambda r: "model_version" not in r)
        rows = (
            (predictions, labels) | JoinPredictionsWithLabels(ADS) | MeasureOnlineQuality(ADS, 60)
        )
        assert_that(
            rows
            | beam.Map(
                lambda r: (
                    r["model_version"],
                    r["window_start"][11:19],
                    r["examples"],
                    r["accuracy"],
                )
            ),
            equal_to([("v1", "22:14:00", 2, 0.5), ("v2", "22:17:00", 1, 1.0)]),
        )


def _prediction_for(record):
    return {"example_id": record["join_id"], "model_version": "v1", "prediction": 0.2}


def test_timeout_negative_is_scored():
    """An impression never converted: its negative is made at T + max_delay, the
    very event time a join without slack would expire its prediction. The
    watermark passes T + max_delay (the labeling timer fires, the negative is
    made) and later everything: the negative is scored.

    (The local runner holds no watermark for a timer's output, so a single
    jump past both expiries would race the two timers; the slack is what the
    negative has to reach the quality join.)"""
    from transforms.labeling import BuildTrainingExamples
    from transforms.validation import validate_payload

    impression = validate_payload(
        {
            "impression_id": "i1",
            "ad_id": "ad1",
            "ts_millis": int((T0 + 1) * 1000),
            "bid_price": 2.0,
            "slot_position": 1,
            "device": "desktop",
            "user_recent_clicks": 3,
        },
        ADS,
        "f-i1",
    )
    stream = (
        TestStream()
        .advance_watermark_to(T0)
        .add_elements([TimestampedValue(impression, T0 + 1)])
        .advance_watermark_to(T0 + 1 + ADS.label.max_delay_seconds + JOIN_EXPIRY_SLACK_SECONDS / 2)
        .advance_watermark_to(T0 + ADS.label.max_delay_seconds + 3600)
        .advance_watermark_to_infinity()
    )
    with TestPipeline(options=_options()) as p:
        features = p | stream
        examples = features | BuildTrainingExamples(ADS)
        predictions = features | "Predict" >> beam.Map(_prediction_for)
        rows = (
            (predictions, examples["examples"])
            | JoinPredictionsWithLabels(ADS)
            | MeasureOnlineQuality(ADS, 60)
        )
        assert_that(
            rows | beam.Map(lambda r: (r["model_version"], r["examples"], r["accuracy"])),
            equal_to([("v1", 1, 1.0)]),
        )


def test_late_pairs_update_a_window_in_one_throttled_pane_with_its_index():
    """Two pairs on time; three late pairs within one late-firing delay make ONE
    accumulated LATE pane (pane_index 1), not one row per pair."""

    def pair(p, y, t):
        return TimestampedValue(("v1", (p, y)), t)

    stream = (
        TestStream()
        .advance_processing_time(T0 + 3600)  # a wall clock past the events
        .advance_watermark_to(T0)
        .add_elements([pair(0.9, 1, T0 + 1), pair(0.2, 0, T0 + 2)])
        .advance_watermark_to(T0 + 61)
        .add_elements([pair(0.9, 0, T0 + 3)])
        .add_elements([pair(0.1, 0, T0 + 4), pair(0.7, 1, T0 + 5)])
        .advance_processing_time(QUALITY_LATE_DELAY + 1)
        .advance_watermark_to_infinity()
    )
    with TestPipeline(options=_options()) as p:
        rows = p | stream | MeasureOnlineQuality(ADS, 60)
        assert_that(
            rows | beam.Map(lambda r: (r["pane_timing"], r["pane_index"], r["examples"])),
            equal_to([("ON_TIME", 0, 2), ("LATE", 1, 5)]),
        )


@pytest.mark.parametrize(
    "sequence",
    [
        ["prediction"],
        ["label"],
        ["prediction", "label"],
        ["label", "prediction"],
        ["prediction", "label", "label"],
        ["prediction", "prediction"],
        ["label", "label", "prediction"],
    ],
)
def test_join_state_is_always_covered_by_a_timer_that_clears_it(sequence):
    """Memory bound: after every element, a key that holds any state has its
    expiry timer set, and that timer empties the key."""
    fn = _JoinPredictionLabelFn(
        "converted", ADS.label.max_delay_seconds + JOIN_EXPIRY_SLACK_SECONDS
    )
    cells = {"prediction_state": Cell(), "label_state": Cell()}
    timer = Timer()
    for i, side in enumerate(sequence):
        row = (
            {"example_id": "x", "model_version": "v1", "prediction": 0.4}
            if side == "prediction"
            else {"example_id": "x", "converted": 1}
        )
        list(fn.process(("x", (side, row)), expiry=timer, timestamp=T0 + i, **cells))
        if any(c.read() is not None for c in cells.values()):
            assert timer.at is not None, f"state held without a timer after {side}"
    fn.expire(**cells)
    assert all(c.read() is None for c in cells.values())
