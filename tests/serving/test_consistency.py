"""One score per event: RunInference, the SavedModel signature and the online service agree."""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that
from fastapi.testclient import TestClient

from model import export
from serving.app import Service, create_app
from tests.model.test_export import MIXED
from transforms.inference import PredictAndRecord
from transforms.validation import validate_payload


def _events(n: int) -> list[dict]:
    """Valid events of the MIXED config (every feature kind), in-domain."""
    events = []
    for i, row in enumerate(export.probe_rows(MIXED, n=n, seed=5)):
        row = dict(row)
        row["count"] = min(max(row["count"], 0), 10)
        row["ratio"] = min(max(row["ratio"], -1.0), 1.0)
        if row["tier"] not in ("gold", "silver"):
            row["tier"] = "gold" if i % 2 else "silver"
        events.append({"entity": f"e{i}", "ts": 1_700_000_000 + i, **row})
    return events


@pytest.fixture(scope="module")
def mixed_registry(tmp_path_factory):
    from model.keras_model import build_model
    from model.registry import ModelRegistry

    registry = ModelRegistry(str(tmp_path_factory.mktemp("consistency") / "registry"))
    model = build_model(MIXED, seed=4)
    version = registry.publish(model, {"note": "consistency"}, config=MIXED)
    registry.promote(version)
    return registry, version, model


def test_runinference_savedmodel_and_service_give_the_same_scores(mixed_registry):
    import tensorflow as tf

    from model.features import encode_batch

    registry, version, model = mixed_registry
    events = _events(40)
    features = [{spec.name: e[spec.name] for spec in MIXED.features} for e in events]
    keras_scores = model.predict(encode_batch(features, MIXED), verbose=0).reshape(-1)

    # 1. The exported signature, called with the raw fields.
    loaded = tf.saved_model.load(registry.saved_model_path(version))
    signature = loaded.signatures["serving_default"]
    saved = signature(**export.raw_inputs(features, MIXED))["prediction"].numpy().reshape(-1)
    np.testing.assert_allclose(saved, keras_scores, atol=1e-5)

    # 2. The online service.
    service = Service(MIXED, registry.root)
    with TestClient(create_app(service)) as client:
        assert service.wait_ready(60)
        response = client.post("/v1/predict", json={"instances": events})
    assert response.status_code == 200, response.text
    online = response.json()["predictions"]
    assert [p["entity"] for p in online] == [e["entity"] for e in events]
    assert {p["model_version"] for p in online} == {version}
    np.testing.assert_allclose([p["prediction"] for p in online], saved, atol=1e-5)

    # 3. RunInference in a pipeline (the streaming pipeline's PredictAndRecord).
    records = [validate_payload(e, MIXED, f"m{i}") for i, e in enumerate(events)]
    expected = {f"m{i}": float(s) for i, s in enumerate(saved)}

    def check(rows):
        got = {row["example_id"]: row["prediction"] for row in rows}
        assert got.keys() == expected.keys()
        for key, value in got.items():
            assert value == pytest.approx(expected[key], abs=1e-5), key
        assert {row["model_version"] for row in rows} == {version}

    with TestPipeline() as p:
        out = (
            p
            | beam.Create(records)
            | PredictAndRecord(MIXED, registry.root, poll_seconds=3600, max_batch_size=16)
        )
        assert_that(out["predictions"], check)


# --------------------------------------------------------- with history features


def _history_config():
    import copy

    import yaml

    from dataset.config import config_from_dict

    with open("configs/traffic.yaml", encoding="utf-8") as f:
        raw = copy.deepcopy(yaml.safe_load(f))
    raw["history_features"] = {
        "occ_mean_3": {"of": "occupancy", "agg": "mean", "last": 3},
        "congested_rate_3": {"agg": "label_mean", "last": 3},
        "last_congested": {"agg": "last_label"},
    }
    return config_from_dict(raw, source="test")


HISTORY = _history_config()


def _keyed_events() -> list[dict]:
    """Events of four sensors in event-time order, labels inline; sensor C is idle
    for two days (its history expires) and D has a single event."""
    from tests.helpers import T0, traffic_payload

    rng = np.random.default_rng(11)
    events, times = [], {"A": 0, "B": 0, "C": 0}
    for i in range(18):
        sensor = "ABC"[i % 3]
        t = T0 + 60 * times[sensor] + i
        times[sensor] += 1
        if sensor == "C" and times[sensor] == 5:
            t += 2 * 24 * 3600
        events.append(
            traffic_payload(
                sensor,
                t,
                occupancy=float(rng.uniform(0, 1)),
                vehicle_count=int(rng.integers(0, 400)),
                congested=int(rng.uniform() < 0.5),
                message_id=f"m{i}",
            )
        )
    events.append(traffic_payload("D", T0 + 30, occupancy=0.9, congested=1, message_id="m18"))
    events.sort(key=lambda e: e["event_time"])
    return events


def _record(event: dict) -> dict:
    payload = {k: v for k, v in event.items() if k != "message_id"}
    return validate_payload(payload, HISTORY, event["message_id"])


@pytest.fixture(scope="module")
def history_registry(tmp_path_factory):
    from model.keras_model import build_model
    from model.registry import ModelRegistry

    registry = ModelRegistry(str(tmp_path_factory.mktemp("history") / "registry"))
    model = build_model(HISTORY, seed=7)
    version = registry.publish(model, {"note": "history"}, config=HISTORY)
    registry.promote(version)
    return registry, version, model


def test_pipeline_batch_job_and_service_agree_with_history_features(history_registry, tmp_path):
    """One event, one score: the streaming history step + RunInference, batch-predict
    and the online service (history from the training rows) on a config WITH history."""
    import json

    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
    from apache_beam.testing.test_stream import TestStream
    from apache_beam.transforms.window import TimestampedValue

    from model.features import encode_batch, model_inputs
    from model.history import history_in_order
    from pipelines import batch_predict as bp
    from serving.history import KeyHistory
    from transforms.history import AttachHistory
    from transforms.labeling import training_row

    registry, version, model = history_registry
    events = _keyed_events()
    records = [_record(e) for e in events]
    # The reference: model.history in event-time order, encoded and scored by Keras.
    history = history_in_order(HISTORY, records)
    inputs = [model_inputs({**r, "history": h}) for r, h in zip(records, history, strict=True)]
    reference = model.predict(encode_batch(inputs, HISTORY), verbose=0).reshape(-1)
    expected = {r["message_id"]: float(s) for r, s in zip(records, reference, strict=True)}
    blank = [model_inputs({**r, "history": {}}) for r in records]
    without = model.predict(encode_batch(blank, HISTORY), verbose=0).reshape(-1)
    assert np.max(np.abs(reference - without)) > 1e-3  # the history values matter
    assert sum(all(v is None for v in h.values()) for h in history) == 5  # 4 firsts, C expired

    def check(rows):
        got = {row["example_id"]: row["prediction"] for row in rows}
        assert got.keys() == expected.keys()
        for key, value in got.items():
            assert value == pytest.approx(expected[key], abs=1e-5), key

    # 1. The streaming pipeline: AttachHistory (stateful, arrival order) + PredictAndRecord.
    stream = TestStream().advance_watermark_to(records[0]["event_time"])
    for record in records:
        stream = stream.add_elements([TimestampedValue(record, record["event_time"])])
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    with TestPipeline(options=options) as p:
        attached = p | stream.advance_watermark_to_infinity() | AttachHistory(HISTORY)
        out = attached | PredictAndRecord(HISTORY, registry.root, poll_seconds=3600)
        assert_that(out["predictions"], check)

    # 2. batch-predict: the instances shuffled, labels inline in the rows.
    lines = [json.dumps(e) for e in events[::-1]]
    lines = lines[1::2] + lines[::2]
    with TestPipeline() as p:
        out = bp.build_graph(p | beam.Create(lines), HISTORY, registry.root, version, "jsonl")
        assert_that(out["predictions"], check)

    # 3. The service. Its store is refreshed from the training rows the pipeline
    # wrote for the events before each request (the latest rows land last).
    rows: list[dict] = []
    store = KeyHistory(HISTORY, lambda: list(rows))
    service = Service(HISTORY, registry.root, history=store)
    instances = [{k: v for k, v in e.items() if k != "message_id"} for e in events]
    online = []
    with TestClient(create_app(service)) as client:
        assert service.wait_ready(60)
        for instance, record, h in zip(instances, records, history, strict=True):
            assert store.refresh(0.0)
            response = client.post("/v1/predict", json={"instances": [instance]})
            assert response.status_code == 200, response.text
            online.extend(response.json()["predictions"])
            row = training_row(HISTORY, {**record, "history": h}, record["label"], 0.0, "inline")
            rows.append(row)
        np.testing.assert_allclose([p["prediction"] for p in online], reference, atol=1e-5)
        found = ["missing" if all(v is None for v in h.values()) else "found" for h in history]
        assert [p["history"] for p in online] == found
        # The caller may send the values itself.
        given = [{**i, **h} for i, h in zip(instances, history, strict=True)]
        response = client.post("/v1/predict", json={"instances": given})
        assert {p["history"] for p in response.json()["predictions"]} == {"given"}
        scores = [p["prediction"] for p in response.json()["predictions"]]
        np.testing.assert_allclose(scores, reference, atol=1e-5)
