"""The HTTP service through FastAPI's TestClient: predictions, errors, reload, metrics."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient

from model.features import encode_batch
from serving.app import Service, create_app
from serving.hybrid import PrecomputedPredictions
from serving.predictor import Precomputed
from tests.helpers import T0, TRAFFIC, traffic_payload
from tests.serving.conftest import wait_for


@pytest.fixture
def client_for():
    """Builds a started TestClient for a Service; everything stops at teardown."""
    stack = []

    def make(service: Service) -> TestClient:
        client = TestClient(create_app(service))
        client.__enter__()
        stack.append(client)
        return client

    yield make
    for client in stack:
        client.__exit__(None, None, None)


@pytest.fixture
def live(traffic_registry, client_for):
    root, v1, _ = traffic_registry
    service = Service(TRAFFIC, root, poll_seconds=0.05)
    client = client_for(service)
    assert service.wait_ready(60)
    return client, service, v1


def _instances(n: int) -> list[dict]:
    rng = np.random.default_rng(7)
    return [
        traffic_payload(
            f"S{i:04d}",
            T0 + i,
            vehicle_count=int(rng.integers(0, 400)),
            mean_speed_kmh=float(rng.uniform(0, 200)),
            occupancy=float(rng.uniform(0, 1)),
            hour_of_day=float(rng.uniform(0, 24)),
            road_type=["highway", "arterial", "local"][i % 3],
        )
        for i in range(n)
    ]


def test_predict_one_and_many_match_the_keras_model(live, traffic_registry):
    from model.registry import ModelRegistry

    client, _, v1 = live
    instances = _instances(20)
    keras_model = ModelRegistry(traffic_registry[0]).load_keras(v1)
    expected = keras_model.predict(encode_batch(instances, TRAFFIC), verbose=0).reshape(-1)

    one = client.post("/v1/predict", json={"instances": instances[:1]})
    assert one.status_code == 200, one.text
    body = one.json()
    assert body["model_version"] == v1
    (p,) = body["predictions"]
    assert p["sensor_id"] == "S0000" and p["path"] == "live" and p["model_version"] == v1
    assert p["prediction"] == pytest.approx(expected[0], abs=1e-5)
    assert p["predicted_label"] == int(p["prediction"] >= 0.5)

    many = client.post("/v1/predict", json={"instances": instances}).json()["predictions"]
    assert [p["sensor_id"] for p in many] == [i["sensor_id"] for i in instances]
    np.testing.assert_allclose([p["prediction"] for p in many], expected, atol=1e-5)
    assert len(set(round(p["prediction"], 6) for p in many)) > 1  # input-dependent model


@pytest.mark.parametrize(
    ("body", "status", "field", "words"),
    [
        ({"instances": "not-a-list"}, 422, "instances", "must be a list"),
        ({"instances": []}, 422, "instances", "empty"),
        ({}, 422, "instances", "required"),
        ({"instances": [], "extra": 1}, 422, "extra", "unexpected"),
        ([1, 2], 422, None, "JSON object"),
        ({"instances": [traffic_payload(occupancy=1.5)]}, 422, "instances[0].occupancy", "maximum"),
        (
            {"instances": [traffic_payload(road_type="river")]},
            422,
            "instances[0].road_type",
            "river",
        ),
        ({"instances": [7]}, 422, "instances[0]", "JSON object"),
    ],
)
def test_bad_requests_get_a_4xx_naming_the_field(live, body, status, field, words):
    client, _, _ = live
    response = client.post("/v1/predict", json=body)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["field"] == field
    assert words in error["error"]


def test_every_invalid_instance_is_listed_with_its_fields(live):
    client, _, _ = live
    instances = [
        traffic_payload(),
        traffic_payload(occupancy=-1),
        traffic_payload(vehicle_count="x"),
    ]
    del instances[2]["sensor_id"]
    error = client.post("/v1/predict", json={"instances": instances}).json()
    assert [e["index"] for e in error["errors"]] == [1, 2]
    assert error["errors"][0]["fields"] == ["occupancy"]
    assert set(error["errors"][1]["fields"]) >= {"vehicle_count", "sensor_id"}


def test_unreadable_and_oversized_requests(traffic_registry, client_for):
    root, _, _ = traffic_registry
    service = Service(TRAFFIC, root, max_body_bytes=2000, max_instances=3)
    client = client_for(service)
    assert service.wait_ready(60)
    assert client.post("/v1/predict", content=b"{not json").status_code == 400
    big = client.post("/v1/predict", content=b" " * 2001)
    assert big.status_code == 413 and "limit" in big.json()["error"]
    many = client.post("/v1/predict", json={"instances": [traffic_payload()] * 4})
    assert many.status_code == 413 and many.json()["field"] == "instances"
    assert (
        client.post("/v1/predict", json={"instances": [traffic_payload()] * 3}).status_code == 200
    )


def test_not_ready_without_a_model(tmp_path, client_for):
    service = Service(TRAFFIC, str(tmp_path / "empty"), poll_seconds=0.05)
    client = client_for(service)
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["ready"] is False
    response = client.post("/v1/predict", json={"instances": [traffic_payload()]})
    assert response.status_code == 503
    # A bad request is still the client's fault, model or not.
    assert client.post("/v1/predict", json={"instances": "x"}).status_code == 422


def test_our_own_fault_is_a_500(traffic_registry, client_for):
    def broken(version):
        def predict(batch):
            raise RuntimeError("boom")

        return predict

    service = Service(TRAFFIC, traffic_registry[0], load=broken)
    client = client_for(service)
    assert service.wait_ready(60)
    response = client.post("/v1/predict", json={"instances": [traffic_payload()]})
    assert response.status_code == 500
    assert "RuntimeError" in response.json()["error"]


def test_hot_reload_when_current_moves(traffic_registry, tmp_path, client_for):
    from model.registry import ModelRegistry

    root = str(tmp_path / "registry")
    shutil.copytree(traffic_registry[0], root)
    _, v1, v2 = traffic_registry
    service = Service(TRAFFIC, root, poll_seconds=0.05)
    client = client_for(service)
    assert service.wait_ready(60)
    request = {"instances": _instances(3)}
    before = client.post("/v1/predict", json=request).json()
    assert before["model_version"] == v1
    ModelRegistry(root).promote(v2)
    wait_for(
        lambda: client.post("/v1/predict", json=request).json()["model_version"] == v2,
        60,
        "the service to serve v2",
    )
    after = client.post("/v1/predict", json=request).json()
    assert [p["prediction"] for p in after["predictions"]] != [
        p["prediction"] for p in before["predictions"]
    ]
    assert client.get("/readyz").json()["model_version"] == v2
    text = client.get("/metrics").text
    assert f'serving_model_info{{version="{v2}"}} 1.0' in text
    assert f'version="{v1}"' not in text
    assert "serving_model_swaps_total 1.0" in text


def test_requests_while_swapping_always_get_a_whole_answer(traffic_registry, tmp_path, client_for):
    from model.registry import ModelRegistry

    root = str(tmp_path / "registry")
    shutil.copytree(traffic_registry[0], root)
    _, v1, v2 = traffic_registry
    service = Service(TRAFFIC, root, poll_seconds=0.01)
    client = client_for(service)
    assert service.wait_ready(60)
    registry = ModelRegistry(root)
    stop = threading.Event()

    def flip():
        for _ in range(6):
            registry.promote(v2)
            registry.promote(v1)
        stop.set()

    flipper = threading.Thread(target=flip)
    flipper.start()
    seen = set()
    while not stop.is_set():
        body = client.post("/v1/predict", json={"instances": _instances(4)}).json()
        versions = {p["model_version"] for p in body["predictions"]} | {body["model_version"]}
        assert len(versions) == 1  # a request is scored whole by one version
        seen |= versions
    flipper.join(30)
    assert seen <= {v1, v2}


def test_metrics_count_requests_latency_and_paths(live):
    client, _, v1 = live
    client.post("/v1/predict", json={"instances": _instances(5)})
    client.post("/v1/predict", json={"instances": "x"})
    client.get("/nope")
    text = client.get("/metrics").text
    assert 'serving_requests_total{code="200",endpoint="/v1/predict"} 1.0' in text
    assert 'serving_requests_total{code="422",endpoint="/v1/predict"} 1.0' in text
    assert 'serving_requests_total{code="404",endpoint="other"} 1.0' in text
    assert 'serving_request_latency_seconds_count{endpoint="/v1/predict"} 2.0' in text
    assert 'serving_predictions_total{path="live"} 5.0' in text
    assert f'serving_model_info{{version="{v1}"}} 1.0' in text
    assert "serving_model_loaded 1.0" in text


def test_hybrid_serves_the_head_precomputed_and_the_tail_live(traffic_registry, client_for):
    root, v1, _ = traffic_registry
    table = {"S0000": Precomputed(0.125, 0, "v-batch", "2026-01-01T00:00:00.000000Z")}
    precomputed = PrecomputedPredictions(lambda: table)
    service = Service(TRAFFIC, root, precomputed=precomputed, refresh_seconds=0.05)
    client = client_for(service)
    assert service.wait_ready(60)
    wait_for(lambda: len(precomputed) == 1, 30, "the precomputed set")
    body = client.post("/v1/predict", json={"instances": _instances(3)}).json()
    head, *tail = body["predictions"]
    assert head == {
        "sensor_id": "S0000",
        "prediction": 0.125,
        "predicted_label": 0,
        "model_version": "v-batch",
        "path": "precomputed",
    }
    assert [p["path"] for p in tail] == ["live", "live"]
    assert {p["model_version"] for p in tail} == {v1} and body["model_version"] == v1
    text = client.get("/metrics").text
    assert "serving_cache_hits_total 1.0" in text
    assert "serving_cache_misses_total 2.0" in text
    assert 'serving_predictions_total{path="precomputed"} 1.0' in text
    assert "serving_precomputed_keys 1.0" in text
    assert client.get("/readyz").json()["precomputed_keys"] == 1


def test_the_command_prints_its_url_serves_and_stops_on_sigterm(traffic_registry):
    import httpx

    root, v1, _ = traffic_registry
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    process = subprocess.Popen(
        [sys.executable, "-m", "serving.app", "--config", "configs/traffic.yaml"]
        + ["--registry", root, "--port", "0", "--log-level", "warning"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = process.stdout.readline()  # blocks until the first line (the URL) or exit
        assert line.startswith("serving: listening on http://127.0.0.1:"), line
        url = line.split()[-1]

        def ready() -> bool:
            return httpx.get(f"{url}/readyz").status_code == 200

        wait_for(ready, 60, "the service to be ready")
        response = httpx.post(f"{url}/v1/predict", json={"instances": [traffic_payload()]})
        assert response.json()["model_version"] == v1
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_json_body_of_a_response_is_plain_json(live):
    client, _, _ = live
    response = client.post("/v1/predict", json={"instances": _instances(1)})
    assert response.headers["content-type"] == "application/json"
    json.loads(response.content)
