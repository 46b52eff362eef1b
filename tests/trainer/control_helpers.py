"""Shared builders for the control-plane tests (launcher, supervisor, claims, monitor).

``FAKE_TRAINER`` stands in for ``trainer.task``: it takes the same arguments,
claims the run with the real ``trainer.claims`` code, records its status rows
with ``trainer.runs.record_run_status``, appends one line per *training* to
``$FAKE_TRAINED_LOG`` (so a test can count trainings) and trains nothing.
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

from dataset.config import load_config
from trainer import runs
from trainer.backends.base import JobArgs
from trainer.backends.local import LocalProcessBackend
from trainer.launcher import Launcher

REPO = Path(__file__).resolve().parents[2]
CONFIG_PATH = str(REPO / "configs" / "traffic.yaml")
TRAFFIC = load_config(CONFIG_PATH)


def trigger_body(trigger_id: str = "traffic-000001", **overrides) -> dict:
    """A valid trigger message body (as ``transforms.triggers`` publishes it)."""
    body = {
        "trigger_id": trigger_id,
        "dataset": "traffic",
        "reason": "new_data",
        "sequence": int(trigger_id[-6:]) if trigger_id[-6:].isdigit() else 1,
        "new_examples": 3000,
        "total_examples": 9000,
        "event_time_start": "2026-01-01T00:00:00Z",
        "event_time_end": "2026-01-01T00:10:00Z",
        "details": None,
        "created_at": "2026-01-01T00:10:01Z",
    }
    body.update(overrides)
    return body


FAKE_TRAINER = textwrap.dedent(
    """
    # Stand-in for trainer.task: same arguments and claim, records its rows, trains nothing.
    import argparse, json, os, sys, time
    from dataset.resources import bigquery_client
    from dataset.config import load_config
    from trainer import claims
    from trainer.runs import record_run_status, runs_table

    p = argparse.ArgumentParser()
    for flag in ("--config", "--project", "--bq_dataset", "--registry", "--run-id",
                 "--trigger-id", "--backend"):
        p.add_argument(flag, required=True)
    p.add_argument("--attempt-id")
    p.add_argument("--trigger-received-at", type=float)
    p.add_argument("--submitted-at", type=float)
    a = p.parse_args()
    time.sleep(float(os.environ.get("FAKE_START_SECONDS", "0")))  # a slow start-up
    try:
        claims.claim(a.registry, a.run_id, a.attempt_id, backend=a.backend)
    except claims.RunOwnedElsewhere as e:
        print(f"fake trainer: refused: {e}", flush=True)
        sys.exit(claims.REFUSED_EXIT_CODE)
    config = load_config(a.config)
    client = bigquery_client(a.project)
    table = runs_table(a.project, a.bq_dataset, config)
    row = {"run_id": a.run_id, "trigger_id": a.trigger_id, "dataset": config.name,
           "backend": a.backend}
    record_run_status(client, table, {**row, "status": "running"})
    with open(os.environ["FAKE_TRAINED_LOG"], "a") as log:
        log.write(json.dumps({"run_id": a.run_id, "pid": os.getpid()}) + "\\n")
    outcome = os.environ.get("FAKE_OUTCOME_" + a.trigger_id.replace("-", "_"), "succeeded")
    time.sleep(float(os.environ.get("FAKE_TRAIN_SECONDS", "0")))
    if outcome == "crash":
        print("fake trainer: crashing", flush=True)
        sys.exit(3)
    record_run_status(client, table, {**row, "status": outcome, "model_version": "v-" + a.run_id})
    """
)


def make_world(bigquery_client, gcp_project: str, dataset: str, tmp_path: Path, topic, sub):
    """Builders around one fresh retrain topic/subscription and BigQuery dataset."""
    from google.cloud import pubsub_v1

    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    trained_log = tmp_path / "trained.jsonl"
    trained_log.touch()
    publisher = pubsub_v1.PublisherClient()
    registry = str(tmp_path / "registry")

    def publish(payload, **attributes):
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        publisher.publish(topic, data, **attributes).result(timeout=10)

    def make_backend(state="state"):
        job = JobArgs(CONFIG_PATH, gcp_project, dataset, registry)
        return LocalProcessBackend(
            job, tmp_path / state, program=[sys.executable, str(script)], cwd=str(REPO)
        )

    def make_launcher(max_concurrent=1, state="state", **kwargs):
        return Launcher(
            TRAFFIC,
            gcp_project,
            sub,
            dataset,
            make_backend(state),
            bigquery_client,
            max_concurrent=max_concurrent,
            poll_seconds=0.2,
            state_dir=tmp_path / state,
            **kwargs,
        )

    def history(trigger_id):
        rows = runs.query_rows(
            bigquery_client,
            f"SELECT status, error, run_id, recorded_at, seq FROM "
            f"`{runs.runs_table(gcp_project, dataset, TRAFFIC)}` WHERE trigger_id = @t",
            [("t", "STRING", trigger_id)],
        )
        return sorted(rows, key=runs.status_order)

    def trained(run_id):
        lines = trained_log.read_text().splitlines()
        return [json.loads(x) for x in lines if json.loads(x)["run_id"] == run_id]

    return SimpleNamespace(
        topic=topic,
        subscription=sub,
        dataset=dataset,
        registry=registry,
        publish=publish,
        publisher=publisher,
        make_backend=make_backend,
        make_launcher=make_launcher,
        history=history,
        trained=trained,
        trained_log=trained_log,
        script=script,
        tmp_path=tmp_path,
    )


def run_until(launcher, done, timeout=40.0):
    """Steps the launcher (short pulls) until ``done(stats)``; returns the stats."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        launcher.step(pull_timeout=1.0)
        stats = launcher.snapshot()
        if done(stats):
            return stats
        time.sleep(0.1)
    raise AssertionError(f"timed out; stats: {launcher.snapshot()}")


def wait_for(condition, timeout=30.0, what="condition"):
    """Waits until ``condition()`` is truthy (polling); returns its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
