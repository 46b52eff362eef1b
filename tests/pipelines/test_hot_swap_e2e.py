"""A running pipeline picks up promotions and rollbacks from the registry (emulators)."""

from __future__ import annotations

import json
import time

import pytest

from dataset.resources import ensure_pubsub
from model.registry import ModelRegistry
from tests.e2e import count, publish, running_pipeline, wait_until
from tests.helpers import traffic_payload
from tests.transforms.test_inference import constant_model
from transforms.triggers import initial_state_from_bigquery
from transforms.validation import utc_iso

pytestmark = pytest.mark.emulators


def _batch(prefix: str, n: int) -> list[tuple[dict, dict]]:
    now = time.time()
    return [
        (
            traffic_payload(f"S{i % 5}", now),
            {"event_time": utc_iso(now), "message_id": f"{prefix}{i}"},
        )
        for i in range(n)
    ]


def _versions(client, dataset: str, prefix: str) -> dict[str, int]:
    rows = client.query(
        f"SELECT model_version, COUNT(*) AS n FROM `{dataset}.predictions` "
        f"WHERE STARTS_WITH(example_id, '{prefix}') GROUP BY model_version"
    ).result()
    return {r["model_version"]: r["n"] for r in rows}


@pytest.fixture(params=["local", "gcs"])
def registry_root(request, tmp_path) -> str:
    """The registry on the local disk, or on the storage emulator (the pipeline
    process inherits STORAGE_EMULATOR_HOST)."""
    if request.param == "local":
        return str(tmp_path / "registry")
    return request.getfixturevalue("gcs_bucket") + "/registry"


def test_promotion_and_rollback_reach_the_running_pipeline(
    gcp_project, pubsub_emulator, bigquery_client, unique_name, tmp_path, registry_root
):
    registry = ModelRegistry(registry_root)
    v1 = registry.publish(constant_model(-5.0), {"note": "v1"}, status="passed")
    v2 = registry.publish(constant_model(5.0), {"note": "v2"}, status="passed")
    registry.promote(v1)
    _, subscription = ensure_pubsub(gcp_project, unique_name, f"{unique_name}-sub")
    _, _ = ensure_pubsub(gcp_project, f"{unique_name}-retrain", f"{unique_name}-launcher")
    log = tmp_path / "pipeline.log"
    with running_pipeline(
        gcp_project,
        "configs/traffic.yaml",
        subscription,
        unique_name,
        log,
        f"--model_registry={registry.root}",
        "--model_poll_seconds=1",
        f"--retrain_topic=projects/{gcp_project}/topics/{unique_name}-retrain",
    ) as proc:
        probes = iter(range(1_000_000))

        def serves(version: str) -> bool:
            """Publishes one probe; whether any probe was scored by ``version`` yet."""
            publish(gcp_project, unique_name, _batch(f"probe{next(probes)}-", 1))
            return version in _versions(bigquery_client, unique_name, "probe")

        phases = [("a", None), ("b", v2), ("c", v1)]  # c: after a rollback to v1
        for prefix, change in phases:
            if change == v2:
                registry.promote(v2, reason="test", if_current=v1)
            elif change == v1:
                assert registry.rollback(reason="test rollback", if_current=v2) == v1
            if change is not None:  # the pipeline has picked the change up
                wait_until(lambda v=change: serves(v), timeout=120, proc=proc, log_path=log)
            publish(gcp_project, unique_name, _batch(prefix, 20))
            wait_until(
                lambda p=prefix: (
                    count(
                        bigquery_client,
                        unique_name,
                        "predictions",
                        f"STARTS_WITH(example_id, '{p}')",
                    )
                    >= 20
                ),
                timeout=120,
                proc=proc,
                log_path=log,
            )
    assert _versions(bigquery_client, unique_name, "a") == {v1: 20}
    assert _versions(bigquery_client, unique_name, "b") == {v2: 20}
    assert _versions(bigquery_client, unique_name, "c") == {v1: 20}
    phase_rows = "NOT STARTS_WITH(example_id, 'probe')"
    assert count(bigquery_client, unique_name, "predictions", phase_rows) == 60  # none lost
    labels = {
        r["example_id"]: r["predicted_label"]
        for r in bigquery_client.query(
            f"SELECT example_id, predicted_label FROM `{unique_name}.predictions`"
        ).result()
    }
    assert {labels[f"b{i}"] for i in range(20)} == {1}
    assert {labels[f"c{i}"] for i in range(20)} == {0}


def test_trigger_state_is_rebuilt_from_bigquery(gcp_project, bigquery_client, unique_name):
    from dataset.resources import ensure_bigquery_tables
    from dataset.tables import TRIGGER_SCHEMA, training_schema
    from tests.helpers import TRAFFIC
    from trainer.runs import insert_typed_rows
    from transforms.labeling import training_row
    from transforms.validation import validate_payload

    empty = initial_state_from_bigquery(bigquery_client, gcp_project, unique_name, TRAFFIC)
    assert (empty.sequence, empty.pending) == (0, 0)  # no dataset yet: a fresh start
    ensure_bigquery_tables(gcp_project, unique_name, TRAFFIC, client=bigquery_client)
    t0 = 1_800_000_000.0

    def examples(first: int, n: int, ingested: float):
        return [
            training_row(
                TRAFFIC,
                validate_payload(traffic_payload("S1", t0 + i), TRAFFIC, f"m{i}"),
                0,
                t0 + i,
                "inline",
                now=ingested,
            )
            for i in range(first, first + n)
        ]

    table = f"{gcp_project}.{unique_name}"
    insert_typed_rows(
        bigquery_client,
        f"{table}.training_examples",
        examples(0, 30, t0 + 100),
        training_schema(TRAFFIC),
    )
    trigger = {
        "trigger_id": "traffic-000007",
        "dataset": "traffic",
        "reason": "new_data",
        "sequence": 7,
        "new_examples": 30,
        "total_examples": 30,
        "event_time_start": utc_iso(t0),
        "event_time_end": utc_iso(t0 + 29),
        "details": json.dumps(None),
        "created_at": utc_iso(t0 + 200),
    }
    insert_typed_rows(bigquery_client, f"{table}.retrain_triggers", [trigger], TRIGGER_SCHEMA)
    insert_typed_rows(
        bigquery_client,
        f"{table}.training_examples",
        examples(30, 12, t0 + 300),
        training_schema(TRAFFIC),
    )
    state = initial_state_from_bigquery(bigquery_client, gcp_project, unique_name, TRAFFIC)
    assert state.sequence == 7  # the next trigger is traffic-000008, never a repeat
    assert state.last_trigger_time == pytest.approx(t0 + 29)
    assert (state.pending, state.total) == (12, 42)
    assert state.pending_start == pytest.approx(t0 + 30)
