import math

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from tests.helpers import ADS, T0
from transforms.quality import (
    JoinPredictionsWithLabels,
    MeasureOnlineQuality,
    add_scored,
    empty_quality,
    quality_metrics,
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
