"""RunInference with the registry handler: hot swap mid-stream, cold start, dead letters."""

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from model.keras_model import build_model
from model.registry import ModelRegistry
from tests.helpers import T0, TRAFFIC, traffic_payload
from transforms.inference import PredictAndRecord
from transforms.validation import validate_payload


def constant_model(probability_logit: float):
    """A traffic model that predicts sigmoid(logit) for every input."""
    model = build_model(TRAFFIC)
    weights = model.get_weights()
    weights = [np.zeros_like(w) for w in weights]
    weights[-1] = np.full_like(weights[-1], probability_logit)
    model.set_weights(weights)
    return model


@pytest.fixture
def registry(tmp_path):
    """A fresh registry per test: v1 (always 0) current, v2 (always 1) published."""
    reg = ModelRegistry(str(tmp_path / "registry"))
    v1 = reg.publish(constant_model(-5.0), {"note": "always no"}, status="passed")
    v2 = reg.publish(constant_model(5.0), {"note": "always yes"}, status="passed")
    reg.promote(v1)
    return reg, v1, v2


def _record(i, t, sensor="S0001"):
    return TimestampedValue(validate_payload(traffic_payload(sensor, t), TRAFFIC, f"m{i}"), t)


class _PromoteOnMarkerFn(beam.DoFn):
    """Test-only: promotes ``version`` when the record from sensor SWAP passes."""

    def __init__(self, root, version):
        self._root, self._version = root, version

    def process(self, record):
        if record["key"] == "SWAP":
            ModelRegistry(self._root).promote(self._version, reason="test swap")
        yield record


def _options():
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    return options


def test_new_version_promoted_mid_stream_predicts_later_elements(registry):
    reg, v1, v2 = registry
    stream = (
        TestStream()
        .advance_watermark_to(T0)
        .add_elements([_record(i, T0 + i) for i in range(5)])
        .advance_watermark_to(T0 + 10)
        .add_elements([_record(5, T0 + 10, sensor="SWAP")])
        .advance_watermark_to(T0 + 20)
        .add_elements([_record(i, T0 + 20 + i) for i in range(6, 12)])
        .advance_watermark_to_infinity()
    )
    p = TestPipeline(options=_options())
    records = p | stream | beam.ParDo(_PromoteOnMarkerFn(reg.root, v2))
    out = records | PredictAndRecord(TRAFFIC, reg.root, poll_seconds=0, max_batch_size=4)
    assert_that(
        out["predictions"]
        | beam.Map(lambda r: (r["example_id"], r["model_version"], r["predicted_label"])),
        equal_to(
            [(f"m{i}", v1, 0) for i in range(5)]
            + [("m5", v2, 1)]
            + [(f"m{i}", v2, 1) for i in range(6, 12)]
        ),
        label="EveryElementOnceWithItsVersion",
    )
    assert_that(out["dead_letter"], equal_to([]), label="NoFailures")
    p.run().wait_until_finish()


def test_cold_start_skips_predictions_until_a_model_exists(tmp_path):
    empty = ModelRegistry(str(tmp_path / "empty"))
    with TestPipeline(options=_options()) as p:
        records = p | beam.Create([validate_payload(traffic_payload(), TRAFFIC, "m1")])
        out = records | PredictAndRecord(TRAFFIC, empty.root, poll_seconds=0)
        assert_that(out["predictions"], equal_to([]), label="NoPredictions")
        assert_that(out["dead_letter"], equal_to([]), label="NoFailures")
