import numpy as np
import pytest
from apache_beam.ml.inference.base import PredictionResult

from model.handler import HotSwapModel, split_model_id
from tests.helpers import T0, TRAFFIC
from transforms.inference import prediction_row


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_hot_swap_polls_at_most_every_interval_and_swaps_between_batches():
    pointer = {"v": None}
    loads = []
    clock = Clock()

    def load(version):
        loads.append(version)
        return f"model-{version}"

    model = HotSwapModel(lambda: pointer["v"], load, poll_seconds=5, clock=clock)
    assert model.acquire() == (None, None)  # cold start: nothing to serve yet
    pointer["v"] = "v1"
    assert model.acquire() == (None, None)  # not due yet
    clock.now = 5
    assert model.acquire() == ("v1", "model-v1")
    pointer["v"] = "v2"
    clock.now = 7
    assert model.acquire() == ("v1", "model-v1")
    clock.now = 10.5
    assert model.acquire() == ("v2", "model-v2")
    pointer["v"] = "v1"  # rollback reaches the worker the same way
    clock.now = 16
    assert model.acquire() == ("v1", "model-v1")
    assert loads == ["v1", "v2", "v1"]


def test_a_broken_version_keeps_the_serving_one():
    pointer = {"v": "v1"}

    def load(version):
        if version == "bad":
            raise OSError("model.keras missing")
        return version

    model = HotSwapModel(lambda: pointer["v"], load, poll_seconds=0)
    assert model.acquire() == ("v1", "v1")
    pointer["v"] = "bad"
    assert model.acquire() == ("v1", "v1")


def test_prediction_row_keeps_key_version_and_latency():
    result = PredictionResult(np.zeros(3), np.array([0.75], dtype=np.float32), "v7|12.500")
    row = prediction_row(TRAFFIC, ("m1", "S0003", T0, 1), result, now=T0 + 2)
    assert row == {
        "example_id": "m1",
        "sensor_id": "S0003",
        "event_time": "2023-11-14T22:14:00.000000Z",
        "prediction": pytest.approx(0.75),
        "predicted_label": 1,
        "model_version": "v7",
        "inference_latency_ms": 12.5,
        "predicted_at": "2023-11-14T22:14:02.000000Z",
    }
    assert (
        prediction_row(TRAFFIC, ("m1", "S0003", T0, 1), PredictionResult(None, None, None)) is None
    )
    assert split_model_id(None) == (None, None)
