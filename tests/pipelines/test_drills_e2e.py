"""Fault drills (issue 9), pipeline side: the real pipeline against emulators that fail.

Each drill runs its own emulator (so the fault does not reach other tests),
publishes two batches around the fault and reconciles every published id with
``local.reconcile``: nothing may be lost or counted twice.

    pytest -m drills tests/pipelines/test_drills_e2e.py
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from dataset.resources import ensure_pubsub
from local import emulators
from local.reconcile import reconcile_tables
from tests.e2e import count, publish, running_pipeline, wait_for_start, wait_until
from tests.helpers import TRAFFIC, traffic_payload
from transforms.validation import utc_iso

pytestmark = [pytest.mark.emulators, pytest.mark.drills]


def _batch(prefix: str, n: int) -> list[tuple[dict, dict]]:
    now = time.time()
    return [
        (
            traffic_payload(f"S{i % 5}", now, congested=i % 2),
            {"event_time": utc_iso(now), "message_id": f"{prefix}{i}"},
        )
        for i in range(n)
    ]


def _ids(batch: list[tuple[dict, dict]]) -> list[str]:
    return [attrs["message_id"] for _, attrs in batch]


def _wait_rows(client, dataset: str, n: int, proc, log, timeout: float = 150) -> None:
    wait_until(
        lambda: count(client, dataset, "training_examples") >= n,
        timeout=timeout,
        proc=proc,
        log_path=log,
    )


def _hold(seconds: float, proc, log) -> None:
    """Keeps a fault in place for ``seconds``, failing early if the pipeline exits."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"pipeline exited during the fault:\n{log.read_text()[-4000:]}"
        time.sleep(1)


def _report(name: str, log, **observed) -> None:
    """One ``DRILL {...}`` line (pytest -s) with what was observed, for the README."""
    text = log.read_text(errors="replace")
    observed["bundle_exceptions"] = text.count("Exception at bundle")
    print(f"DRILL {json.dumps({'drill': name, **observed}, default=str)}")


def test_pubsub_emulator_restarted_mid_stream(
    fake_credentials, bigquery_emulator, bigquery_client, gcp_project, unique_name, tmp_path
):
    """The emulator keeps no state: after its restart the topic and subscription are
    recreated (as an operator would), and the publisher re-sends the messages it
    cannot be sure about (same ids). The pipeline must resume, drop the
    redelivered copies and account for every id."""
    state = tmp_path / "pubsub"
    info = emulators.start_pubsub(state, port=None)
    env_before = os.environ.get("PUBSUB_EMULATOR_HOST")
    os.environ.update(info.env)
    try:
        _, subscription = ensure_pubsub(gcp_project, unique_name, f"{unique_name}-sub")
        first, second = _batch("a", 20), _batch("b", 20)
        log = tmp_path / "pipeline.log"
        with running_pipeline(
            gcp_project, "configs/traffic.yaml", subscription, unique_name, log
        ) as proc:
            wait_for_start(proc, log)
            publish(gcp_project, unique_name, first)
            _wait_rows(bigquery_client, unique_name, 20, proc, log)
            emulators.stop(state, emulators.PUBSUB)
            down = time.monotonic()
            emulators.start_pubsub(state, port=info.port)
            ensure_pubsub(gcp_project, unique_name, f"{unique_name}-sub")
            restarted = time.monotonic()
            publish(gcp_project, unique_name, first[10:] + second)  # retried + new
            _wait_rows(bigquery_client, unique_name, 40, proc, log)
            landed = time.monotonic()
            assert proc.poll() is None
    finally:
        emulators.stop(state, emulators.PUBSUB)
        if env_before is None:
            os.environ.pop("PUBSUB_EMULATOR_HOST", None)
        else:
            os.environ["PUBSUB_EMULATOR_HOST"] = env_before
    result = reconcile_tables(
        bigquery_client, gcp_project, unique_name, TRAFFIC, _ids(first + second)
    )
    _report(
        "pubsub_restart",
        log,
        outage_s=round(restarted - down, 1),
        resent_duplicates=10,
        seconds_to_land_after_restart=round(landed - restarted, 1),
        **result,
    )
    assert result["unaccounted"] == 0, result
    assert result["double_counted"] == 0, result


def test_bigquery_unavailable_for_30_seconds(
    fake_credentials, pubsub_emulator, gcp_project, unique_name, tmp_path
):
    """The BigQuery emulator is frozen (SIGSTOP) for 30 s while events keep coming;
    once it answers again every event must land (retried) or be dead-lettered."""
    from dataset.resources import bigquery_client as make_client

    state = tmp_path / "bigquery"
    saved = {
        k: os.environ.get(k) for k in ("BIGQUERY_EMULATOR_HOST", "BIGQUERY_EMULATOR_GRPC_HOST")
    }
    with emulators.bigquery_emulator(state, project=gcp_project) as info:
        os.environ.update(info.env)
        client = make_client(gcp_project)
        try:
            _, subscription = ensure_pubsub(gcp_project, unique_name, f"{unique_name}-sub")
            first, second = _batch("a", 20), _batch("b", 20)
            log = tmp_path / "pipeline.log"
            with running_pipeline(
                gcp_project, "configs/traffic.yaml", subscription, unique_name, log
            ) as proc:
                wait_for_start(proc, log)
                publish(gcp_project, unique_name, first)
                _wait_rows(client, unique_name, 20, proc, log)
                os.killpg(info.pid, signal.SIGSTOP)
                try:
                    publish(gcp_project, unique_name, second)
                    _hold(30, proc, log)
                finally:
                    os.killpg(info.pid, signal.SIGCONT)
                resumed = time.monotonic()

                def landed_or_dead_lettered() -> bool:
                    done = count(client, unique_name, "training_examples")
                    return done + count(client, unique_name, "dead_letter") >= 40

                wait_until(landed_or_dead_lettered, timeout=240, proc=proc, log_path=log)
                landed = time.monotonic()
            result = reconcile_tables(
                client, gcp_project, unique_name, TRAFFIC, _ids(first + second)
            )
            _report(
                "bigquery_frozen_30s",
                log,
                seconds_to_land_after_resume=round(landed - resumed, 1),
                **result,
            )
            assert result["unaccounted"] == 0, result
            assert result["double_counted"] == 0, result
        finally:
            client.close()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
