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
