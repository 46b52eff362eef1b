"""Tests of the training launcher (trainer/launcher.py).

Pure parts (trigger parsing, quality summaries, the rollback decision, the
Vertex AI CustomJob spec) run without emulators. The launcher loop runs
against the Pub/Sub and BigQuery emulators with a stand-in trainer: a tiny
script that takes trainer.task's arguments and records its status rows with
``trainer.runs.record_run_status``, so no model is trained.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from dataset.config import RetrainingPolicy, load_config
from trainer import launcher as L

REPO = Path(__file__).resolve().parents[2]
CONFIG_PATH = str(REPO / "configs" / "traffic.yaml")
TRAFFIC = load_config(CONFIG_PATH)


def _trigger(trigger_id: str = "traffic-000001", **overrides) -> dict:
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


# ----------------------------------------------------------------- triggers


def test_parse_trigger_valid():
    t = L.parse_trigger(
        json.dumps(_trigger()).encode(), {"trigger_id": "traffic-000001"}, "traffic"
    )
    assert t.trigger_id == "traffic-000001"
    assert t.reason == "new_data" and t.sequence == 1 and t.new_examples == 3000
    run = L.Run.from_trigger(t)
    assert run == L.Run("run-traffic-000001", "traffic-000001", "traffic", "new_data")


@pytest.mark.parametrize(
    "data, attributes, match",
    [
        (b"not json", {}, "not JSON"),
        (b"[1, 2]", {}, "JSON object"),
        (json.dumps(_trigger(trigger_id="")).encode(), {}, "trigger_id"),
        (json.dumps(_trigger(trigger_id="a b")).encode(), {}, "trigger_id"),
        (json.dumps(_trigger()).encode(), {"trigger_id": "other"}, "attribute"),
        (json.dumps(_trigger(dataset="ads")).encode(), {}, "dataset"),
        (json.dumps(_trigger(reason="because")).encode(), {}, "reason"),
        (json.dumps(_trigger(sequence="7")).encode(), {}, "sequence"),
        (json.dumps(_trigger(new_examples=1.5)).encode(), {}, "new_examples"),
        (json.dumps(_trigger(event_time_end="yesterday")).encode(), {}, "event_time_end"),
    ],
)
def test_parse_trigger_malformed(data, attributes, match):
    with pytest.raises(L.MalformedTrigger, match=match):
        L.parse_trigger(data, attributes, "traffic")


# ----------------------------------------------------------------- rollback decision

POLICY = RetrainingPolicy(quality_min_examples=100, rollback_margin=0.05)


def _q(examples, accuracy=None, rmse=None):
    return {"examples": examples, "accuracy": accuracy, "rmse": rmse}


@pytest.mark.parametrize(
    "current, previous, expected, reason_part",
    [
        (_q(500, accuracy=0.80), _q(1000, accuracy=0.90), True, "drop +0.1000"),
        (_q(500, accuracy=0.86), _q(1000, accuracy=0.90), False, "drop +0.0400"),
        (_q(500, accuracy=0.85), _q(1000, accuracy=0.90), False, "margin 0.0500"),  # == margin
        (_q(500, accuracy=0.95), _q(1000, accuracy=0.90), False, "drop -0.0500"),
        (_q(99, accuracy=0.10), _q(1000, accuracy=0.90), False, "current version has 99"),
        (_q(500, accuracy=0.10), _q(50, accuracy=0.90), False, "previous version has 50"),
        (None, _q(1000, accuracy=0.90), False, "current version has 0"),
        (_q(500, accuracy=0.80), None, False, "previous version has 0"),
        (_q(500), _q(1000, accuracy=0.9), False, "no accuracy"),
    ],
)
def test_should_roll_back_classification(current, previous, expected, reason_part):
    decision, reason = L.should_roll_back(current, previous, POLICY, "binary_classification")
    assert decision is expected
    assert reason_part in reason


@pytest.mark.parametrize(
    "cur_rmse, expected",
    [(10.6, True), (10.4, False), (9.0, False)],  # previous 10.0, margin 5% relative
)
def test_should_roll_back_regression_relative_margin(cur_rmse, expected):
    decision, reason = L.should_roll_back(
        _q(500, rmse=cur_rmse), _q(500, rmse=10.0), POLICY, "regression"
    )
    assert decision is expected, reason
    assert "rmse" in reason


def test_summarize_quality_latest_pane_since_and_last_windows():
    def row(start, computed, examples, accuracy, rmse=None):
        return {
            "window_start": f"2026-01-01T00:{start:02d}:00Z",
            "window_end": f"2026-01-01T00:{start + 1:02d}:00Z",
            "examples": examples,
            "accuracy": accuracy,
            "rmse": rmse,
            "computed_at": f"2026-01-01T01:00:{computed:02d}Z",
        }

    rows = [
        row(0, 1, 10, 0.0),  # early pane of window 0 ...
        row(0, 5, 100, 0.5),  # ... superseded by its on-time pane (accumulating)
        row(1, 6, 300, 1.0),
        row(2, 7, 100, 0.9),
    ]
    all_q = L.summarize_quality(rows)
    assert all_q["windows"] == 3 and all_q["examples"] == 500
    assert all_q["accuracy"] == pytest.approx((50 + 300 + 90) / 500)
    since_q = L.summarize_quality(rows, since="2026-01-01T01:00:06Z")
    assert since_q["examples"] == 400
    last_q = L.summarize_quality(rows, last_windows=1)
    assert last_q["examples"] == 100 and last_q["accuracy"] == pytest.approx(0.9)
    assert L.summarize_quality([]) == {
        "examples": 0,
        "windows": 0,
        "accuracy": None,
        "log_loss": None,
        "mae": None,
        "rmse": None,
    }
    pooled = L.summarize_quality([row(0, 1, 1, None, 3.0), row(1, 1, 3, None, 1.0)])
    assert pooled["rmse"] == pytest.approx(((9 + 3) / 4) ** 0.5)


def test_summarize_quality_latest_pane_is_the_highest_pane_index():
    """Panes are numbered by the stream; computed_at (a worker's clock) may disagree."""

    def row(pane, computed, examples, accuracy):
        return {
            "window_start": "2026-01-01T00:00:00Z",
            "window_end": "2026-01-01T00:01:00Z",
            "examples": examples,
            "accuracy": accuracy,
            "pane_index": pane,
            "computed_at": f"2026-01-01T01:00:{computed:02d}Z",
        }

    q = L.summarize_quality([row(0, 9, 100, 0.5), row(1, 3, 150, 0.6), row(None, 30, 1, 0.0)])
    assert q["windows"] == 1 and q["examples"] == 150 and q["accuracy"] == pytest.approx(0.6)


# ----------------------------------------------------------------- Vertex AI

JOB = L.JobArgs(
    config_path="gs://bucket/staging/configs/traffic-0123456789ab.yaml",
    project="my-project",
    bq_dataset="traffic_prod",
    registry="gs://bucket/registry",
)
SETTINGS = L.VertexSettings(
    project="my-project",
    region="europe-west4",
    staging_bucket="gs://bucket/staging",
    container_uri="europe-docker.pkg.dev/vertex-ai/training/tf-cpu.2-17.py310:latest",
    package_uris=("gs://bucket/staging/packages/streaming-continuous-training-0.1.0-abc.tar.gz",),
    job=JOB,
    machine_type="n1-standard-4",
    service_account="trainer@my-project.iam.gserviceaccount.com",
)
RUN = L.Run("run-traffic-000042", "traffic-000042", "traffic", "quality")
EXPECTED_ARGS = [
    "--config",
    "gs://bucket/staging/configs/traffic-0123456789ab.yaml",
    "--project",
    "my-project",
    "--bq_dataset",
    "traffic_prod",
    "--registry",
    "gs://bucket/registry",
    "--run-id",
    "run-traffic-000042",
    "--trigger-id",
    "traffic-000042",
    "--backend",
    "vertex",
]


def test_vertex_job_spec_exact():
    assert L.vertex_job_spec(RUN, SETTINGS) == {
        "display_name": "train-traffic-run-traffic-000042",
        "worker_pool_specs": [
            {
                "machine_spec": {"machine_type": "n1-standard-4"},
                "replica_count": 1,
                "python_package_spec": {
                    "executor_image_uri": (
                        "europe-docker.pkg.dev/vertex-ai/training/tf-cpu.2-17.py310:latest"
                    ),
                    "package_uris": [
                        "gs://bucket/staging/packages/"
                        "streaming-continuous-training-0.1.0-abc.tar.gz"
                    ],
                    "python_module": "trainer.task",
                    "args": EXPECTED_ARGS,
                },
            }
        ],
        "base_output_dir": "gs://bucket/staging/runs/run-traffic-000042",
        "staging_bucket": "gs://bucket/staging",
        "labels": {
            "app": "continuous-training",
            "dataset": "traffic",
            "run_id": "run-traffic-000042",
        },
    }


def test_local_and_vertex_pass_the_same_trainer_arguments(tmp_path):
    local = L.LocalProcessBackend(dataclasses.replace(JOB, config_path="c.yaml"), tmp_path)
    assert local.command(RUN)[:3] == [sys.executable, "-m", "trainer.task"]
    vertex_args = L.vertex_job_spec(RUN, SETTINGS)["worker_pool_specs"][0]["python_package_spec"]
    assert local.command(RUN)[3:] == ["--config", "c.yaml", *EXPECTED_ARGS[2:-1], "local"]
    assert vertex_args["args"][2:-1] == EXPECTED_ARGS[2:-1]


def _anonymous():
    from google.auth.credentials import AnonymousCredentials

    return AnonymousCredentials()


def test_custom_job_is_built_from_the_spec():
    from google.cloud import aiplatform
    from google.protobuf import json_format

    spec = L.vertex_job_spec(RUN, SETTINGS)
    job = L.build_custom_job(spec, SETTINGS, credentials=_anonymous())
    assert isinstance(job, aiplatform.CustomJob)
    resource = json_format.MessageToDict(job._gca_resource._pb, preserving_proto_field_name=True)
    expected_pools = json.loads(json.dumps(spec["worker_pool_specs"]))
    expected_pools[0]["replica_count"] = "1"  # int64 is a string in proto JSON
    assert resource == {
        "display_name": spec["display_name"],
        "job_spec": {
            "worker_pool_specs": expected_pools,
            "base_output_directory": {"output_uri_prefix": spec["base_output_dir"]},
        },
        "labels": spec["labels"],
    }
    assert job.project == "my-project" and job.location == "europe-west4"


def test_vertex_backend_submit_and_poll(monkeypatch):
    from google.cloud import aiplatform

    submitted = {}

    def fake_submit(self, **kwargs):  # the only network call, replaced
        submitted["job"] = self
        submitted["kwargs"] = kwargs
        self._gca_resource.name = "projects/1/locations/europe-west4/customJobs/42"

    monkeypatch.setattr(aiplatform.CustomJob, "submit", fake_submit)
    backend = L.VertexBackend(SETTINGS, credentials=_anonymous())
    handle = backend.submit(RUN)
    assert handle == L.VertexHandle(RUN.run_id, "projects/1/locations/europe-west4/customJobs/42")
    assert submitted["kwargs"] == {"service_account": SETTINGS.service_account}
    pool = submitted["job"].job_spec.worker_pool_specs[0]
    assert list(pool.python_package_spec.args) == EXPECTED_ARGS
    assert backend.describe(handle) == {"kind": "vertex", "resource_name": handle.resource_name}
    assert backend.reattach({"run_id": RUN.run_id, **backend.describe(handle)}) == handle

    states = iter(["JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED"])

    def fake_get(resource_name, project=None, location=None, credentials=None):
        assert resource_name == handle.resource_name and location == "europe-west4"
        return SimpleNamespace(
            state=SimpleNamespace(name=next(states)),
            _gca_resource=SimpleNamespace(error=SimpleNamespace(message="OOM")),
        )

    monkeypatch.setattr(aiplatform.CustomJob, "get", staticmethod(fake_get))
    assert backend.poll(handle) == L.JobState("running")
    assert backend.poll(handle) == L.JobState("exited")
    failed = backend.poll(handle)
    assert failed.state == "failed" and "OOM" in failed.detail


def test_staged_uri_is_content_addressed(tmp_path):
    a = tmp_path / "pkg-0.1.0.tar.gz"
    a.write_bytes(b"one")
    uri = L.staged_uri("gs://b/staging/", "packages", a)
    assert uri.startswith("gs://b/staging/packages/pkg-0.1.0-") and uri.endswith(".tar.gz")
    a.write_bytes(b"two")
    assert L.staged_uri("gs://b/staging", "packages", a) != uri
    cfg = tmp_path / "traffic.yaml"
    cfg.write_text("x")
    assert L.staged_uri("gs://b", "configs", cfg).endswith(".yaml")


# ----------------------------------------------------------------- local backend


def test_local_backend_failure_detail_and_log(tmp_path):
    program = [sys.executable, "-c", "import sys; print('boom: bad data'); sys.exit(3)"]
    backend = L.LocalProcessBackend(JOB, tmp_path, program=program)
    handle = backend.submit(RUN)
    deadline = time.monotonic() + 20
    while (state := backend.poll(handle)).state == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state.state == "failed"
    assert "status 3" in state.detail and "boom: bad data" in state.detail
    assert Path(handle.log_path) == tmp_path / "logs" / "run-traffic-000042.log"
    # The record a restarted launcher reads: the process is gone.
    assert backend.reattach({"run_id": RUN.run_id, **backend.describe(handle)}) is None


# ----------------------------------------------------------------- monitor (fake registry)


class FakeRegistry:
    """The slice of ModelRegistry the monitor uses."""

    def __init__(self, current="v2", previous="v1", action="promote", prev_status="passed"):
        self.pointer = {"version": current, "previous": previous, "updated_at": "x"}
        self.events = [
            {"action": "promote", "version": previous},
            {"action": action, "version": current},
        ]
        self.infos = {
            current: SimpleNamespace(
                status="promoted", metadata={"promoted_at": "2026-01-01T00:30:00Z"}
            ),
            previous: SimpleNamespace(status=prev_status, metadata={}),
        }
        self.rollbacks = []

    def current_pointer(self):
        return self.pointer

    def history(self):
        return self.events

    def get(self, version):
        return self.infos[version]

    def rollback(self, to_version=None, reason=""):
        self.rollbacks.append((to_version, reason))
        return to_version


def _quality(version, minute, examples, accuracy, computed="2026-01-01T01:00:00Z"):
    return {
        "window_start": f"2026-01-01T00:{minute:02d}:00Z",
        "window_end": f"2026-01-01T00:{minute + 1:02d}:00Z",
        "model_version": version,
        "examples": examples,
        "accuracy": accuracy,
        "computed_at": computed,
    }


# ----------------------------------------------------------------- emulator tests

FAKE_TRAINER = textwrap.dedent(
    """
    # Stand-in for trainer.task: same arguments, records its status rows, trains nothing.
    import argparse, os, sys, time
    from dataset.resources import bigquery_client
    from dataset.config import load_config
    from trainer.runs import record_run_status, runs_table

    p = argparse.ArgumentParser()
    for flag in ("--config", "--project", "--bq_dataset", "--registry", "--run-id",
                 "--trigger-id", "--backend"):
        p.add_argument(flag, required=True)
    a = p.parse_args()
    config = load_config(a.config)
    client = bigquery_client(a.project)
    table = runs_table(a.project, a.bq_dataset, config)
    row = {"run_id": a.run_id, "trigger_id": a.trigger_id, "dataset": config.name,
           "backend": a.backend}
    record_run_status(client, table, {**row, "status": "running"})
    outcome = os.environ.get("FAKE_OUTCOME_" + a.trigger_id.replace("-", "_"), "succeeded")
    time.sleep(float(os.environ.get("FAKE_TRAIN_SECONDS", "0")))
    if outcome == "crash":
        print("fake trainer: crashing", flush=True)
        sys.exit(3)
    record_run_status(client, table, {**row, "status": outcome, "model_version": "v-" + a.run_id})
    """
)


@pytest.fixture
def world(pubsub_emulator, bigquery_client, gcp_project, unique_name, tmp_path):
    """A retrain topic + subscription and the BigQuery tables, all fresh; deleted after."""
    from google.cloud import pubsub_v1

    from dataset.resources import ensure_bigquery_tables, ensure_pubsub

    topic, subscription = ensure_pubsub(gcp_project, unique_name, f"{unique_name}-launcher")
    ensure_bigquery_tables(gcp_project, unique_name, TRAFFIC, client=bigquery_client)
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    publisher = pubsub_v1.PublisherClient()

    def publish(payload, **attributes):
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        publisher.publish(topic, data, **attributes).result(timeout=10)

    def make_launcher(max_concurrent=1, **kwargs):
        job = L.JobArgs(CONFIG_PATH, gcp_project, unique_name, str(tmp_path / "registry"))
        backend = L.LocalProcessBackend(
            job, tmp_path / "state", program=[sys.executable, str(script)], cwd=str(REPO)
        )
        return L.Launcher(
            TRAFFIC,
            gcp_project,
            subscription,
            unique_name,
            backend,
            bigquery_client,
            max_concurrent=max_concurrent,
            poll_seconds=0.2,
            state_dir=tmp_path / "state",
            **kwargs,
        )

    def history(trigger_id):
        rows = L._query(
            bigquery_client,
            f"SELECT status, error, run_id, recorded_at FROM "
            f"`{L.runs_table(gcp_project, unique_name, TRAFFIC)}` "
            "WHERE trigger_id = @t ORDER BY recorded_at",
            [("t", "STRING", trigger_id)],
        )
        return rows

    yield SimpleNamespace(
        topic=topic,
        subscription=subscription,
        dataset=unique_name,
        publish=publish,
        make_launcher=make_launcher,
        history=history,
        script=script,
        tmp_path=tmp_path,
    )
    subscriber = pubsub_v1.SubscriberClient()
    subscriber.delete_subscription(request={"subscription": subscription}, timeout=10)
    publisher.delete_topic(request={"topic": topic}, timeout=10)
    subscriber.close()
    bigquery_client.delete_dataset(unique_name, delete_contents=True, not_found_ok=True)


def _run_until(launcher, done, timeout=40.0):
    """Steps the launcher (short pulls) until ``done(stats)``; returns the stats."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        launcher.step(pull_timeout=1.0)
        stats = launcher.snapshot()
        if done(stats):
            return stats
        time.sleep(0.1)
    raise AssertionError(f"timed out; stats: {launcher.snapshot()}")


@pytest.mark.emulators
def test_same_trigger_twice_and_a_malformed_one_start_exactly_one_run(world):
    body = _trigger("traffic-000001")
    world.publish(body, trigger_id="traffic-000001")
    world.publish(body, trigger_id="traffic-000001")  # a redelivery / replayed duplicate
    world.publish(b"{not json")
    # Two free slots: both copies may come in one pull; the second must still be skipped.
    launcher = world.make_launcher(max_concurrent=2)
    stats = _run_until(
        launcher,
        lambda s: s["triggers_received"] == 3 and s["in_flight"] == 0 and s["runs_started"],
    )
    assert stats["runs_started"] == 1
    assert stats["duplicate_triggers"] == 1
    assert stats["malformed_triggers"] == 1
    assert stats["runs_succeeded"] == 1 and stats["runs_failed"] == 0
    assert [r["status"] for r in world.history("traffic-000001")] == [
        "queued",
        "running",
        "succeeded",
    ]
    assert {r["run_id"] for r in world.history("traffic-000001")} == {"run-traffic-000001"}
    # Everything was acked: nothing comes back.
    assert launcher.pull_once(timeout=2.0) == 0
    saved = json.loads(Path(launcher.stats_file).read_text())
    assert saved["triggers_received"] == 3 and saved["runs_started"] == 1
    log = (world.tmp_path / "state" / "logs" / "run-traffic-000001.log").read_text()
    assert "--trigger-id traffic-000001" in log
    # A later launcher (restart) sees the same trigger again: still a duplicate.
    world.publish(body, trigger_id="traffic-000001")
    again = world.make_launcher()
    again.recover()
    stats = _run_until(again, lambda s: s["triggers_received"] == 1)
    assert stats["duplicate_triggers"] == 1 and stats["runs_started"] == 0


@pytest.mark.emulators
def test_queued_but_never_started_run_is_started_at_startup(world, bigquery_client, gcp_project):
    from trainer.runs import record_run_status

    # A launcher recorded 'queued' and acked, then died before starting the job.
    record_run_status(
        bigquery_client,
        L.runs_table(gcp_project, world.dataset, TRAFFIC),
        {
            "run_id": "run-traffic-000007",
            "trigger_id": "traffic-000007",
            "dataset": "traffic",
            "backend": "local",
            "status": "queued",
            "reason": "schedule",
        },
    )
    launcher = world.make_launcher()
    launcher.recover()
    assert [r.run_id for r in launcher.pending] == ["run-traffic-000007"]
    stats = _run_until(launcher, lambda s: s["runs_succeeded"] == 1)
    assert stats["runs_recovered"] == 1 and stats["runs_started"] == 1
    assert stats["triggers_received"] == 0
    assert [r["status"] for r in world.history("traffic-000007")] == [
        "queued",
        "running",
        "succeeded",
    ]
    # Nothing queued any more: a second start-up recovers nothing.
    second = world.make_launcher()
    second.recover()
    assert not second.pending


@pytest.mark.emulators
def test_triggers_wait_for_a_free_slot_and_crashes_are_recorded(world, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_SECONDS", "1.5")
    monkeypatch.setenv("FAKE_OUTCOME_traffic_000001", "crash")
    monkeypatch.setenv("FAKE_OUTCOME_traffic_000002", "rejected")
    world.publish(_trigger("traffic-000001"), trigger_id="traffic-000001")
    world.publish(_trigger("traffic-000002", reason="quality"), trigger_id="traffic-000002")
    launcher = world.make_launcher(max_concurrent=1)
    max_in_flight = 0

    def done(s):
        nonlocal max_in_flight
        max_in_flight = max(max_in_flight, s["in_flight"])
        return s["runs_failed"] + s["runs_rejected"] == 2

    stats = _run_until(launcher, done)
    assert max_in_flight == 1
    assert stats["runs_started"] == 2 and stats["triggers_received"] == 2
    crashed, rejected = world.history("traffic-000001"), world.history("traffic-000002")
    assert [r["status"] for r in crashed] == ["queued", "running", "failed"]
    assert "exited with status 3" in crashed[-1]["error"]
    assert "fake trainer: crashing" in crashed[-1]["error"]
    assert [r["status"] for r in rejected] == ["queued", "running", "rejected"]
    # Whichever came second waited (unacked, not even queued) until the first run ended.
    first, second = sorted([crashed, rejected], key=lambda h: h[0]["recorded_at"])
    assert second[0]["recorded_at"] >= first[-1]["recorded_at"]


@pytest.mark.emulators
def test_monitor_rolls_back_a_worse_version(world, bigquery_client, gcp_project):
    from dataset.tables import QUALITY_SCHEMA
    from trainer.runs import insert_typed_rows, record_run_status

    rows = [
        # previous version v1: 0.9 accuracy over its last windows
        *[_quality("v1", m, 200, 0.9) for m in range(0, 5)],
        # current version v2, promoted 00:30: 0.7 (scored after the promotion)
        _quality("v2", 31, 40, 0.2, computed="2026-01-01T00:31:30Z"),  # early pane...
        _quality("v2", 31, 150, 0.7),  # ...superseded
        _quality("v2", 32, 150, 0.7),
    ]
    insert_typed_rows(
        bigquery_client,
        L.quality_table(gcp_project, world.dataset, TRAFFIC),
        rows,
        QUALITY_SCHEMA,
    )
    record_run_status(
        bigquery_client,
        L.runs_table(gcp_project, world.dataset, TRAFFIC),
        {
            "run_id": "run-traffic-000003",
            "trigger_id": "traffic-000003",
            "dataset": "traffic",
            "status": "succeeded",
            "model_version": "v2",
            "promoted": True,
        },
    )
    registry = FakeRegistry()
    launcher = world.make_launcher(registry=registry)
    assert launcher.monitor_once() is True
    assert registry.rollbacks[0][0] == "v1"
    assert "automatic rollback: online accuracy 0.7000 (300 examples)" in registry.rollbacks[0][1]
    assert launcher.stats["rollbacks"] == 1
    assert launcher.stats["last_rollback"]["from"] == "v2"
    statuses = [r["status"] for r in world.history("traffic-000003")]
    assert statuses == ["succeeded", "rolled_back"]

    # The run is named by the version's metadata (trainer.task writes run_id/trigger_id).
    by_metadata = FakeRegistry()
    by_metadata.infos["v2"].metadata.update(
        run_id="run-traffic-000004", trigger_id="traffic-000004"
    )
    assert world.make_launcher(registry=by_metadata).monitor_once() is True
    assert [r["status"] for r in world.history("traffic-000004")] == ["rolled_back"]

    # Not judged: a version that became current by a rollback, or no previous version.
    assert world.make_launcher(registry=FakeRegistry(action="rollback")).monitor_once() is False
    no_prev = FakeRegistry()
    no_prev.pointer["previous"] = None
    assert world.make_launcher(registry=no_prev).monitor_once() is False
    # Within the margin: no rollback.
    close = FakeRegistry(current="v2", previous="v1")
    launcher = world.make_launcher(registry=close)
    launcher.config = dataclasses.replace(
        TRAFFIC, retraining=dataclasses.replace(TRAFFIC.retraining, rollback_margin=0.25)
    )
    assert launcher.monitor_once() is False and not close.rollbacks


@pytest.mark.emulators
def test_cli_sigterm_requeues_the_running_job(world, gcp_project):
    stats_file = world.tmp_path / "stats.json"
    world.publish(_trigger("traffic-000005"), trigger_id="traffic-000005")
    env = {**os.environ, "FAKE_TRAIN_SECONDS": "60"}
    cmd = [
        sys.executable,
        "-m",
        "trainer.launcher",
        "--project",
        gcp_project,
        "--config",
        CONFIG_PATH,
        "--subscription",
        world.subscription,
        "--bq_dataset",
        world.dataset,
        "--registry",
        str(world.tmp_path / "registry"),
        "--poll-seconds",
        "0.5",
        "--grace-seconds",
        "1",
        "--no-monitor",
        "--state-dir",
        str(world.tmp_path / "cli-state"),
        "--stats-file",
        str(stats_file),
        "--trainer-program",
        f"{sys.executable} {world.script}",
        "--duration",
        "50",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        running = False
        while time.monotonic() < deadline and not running:
            time.sleep(0.3)
            statuses = [r["status"] for r in world.history("traffic-000005")]
            running = statuses[-1:] == ["running"]
        assert running, f"never running: {statuses}"
        assert json.loads(stats_file.read_text())["in_flight"] == 1
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()[-2000:]
    final = json.loads(out.decode().strip().splitlines()[-1])
    assert final["runs_started"] == 1 and final["runs_requeued"] == 1 and final["in_flight"] == 0
    assert json.loads(stats_file.read_text())["runs_requeued"] == 1
    # Re-queued for the next start (recorded after the job was stopped).
    assert [r["status"] for r in world.history("traffic-000005")] == [
        "queued",
        "running",
        "queued",
    ]
    assert "SIGTERM" in err.decode()


@pytest.mark.emulators
def test_restarted_launcher_reattaches_to_a_running_job(world, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_SECONDS", "3")
    world.publish(_trigger("traffic-000009"), trigger_id="traffic-000009")
    first = world.make_launcher()
    _run_until(first, lambda s: s["runs_started"] == 1)
    # The first launcher dies here (no shutdown); its job keeps running.
    second = world.make_launcher()
    second.recover()
    assert list(second.in_flight) == ["run-traffic-000009"] and not second.pending
    stats = _run_until(second, lambda s: s["runs_succeeded"] == 1)
    assert stats["runs_started"] == 0  # not started twice
    assert [r["status"] for r in world.history("traffic-000009")] == [
        "queued",
        "running",
        "succeeded",
    ]
    assert not list((world.tmp_path / "state" / "inflight").glob("*.json"))


def test_vertex_cli_settings_and_refusals(tmp_path):
    base = [
        "--project",
        "my-project",
        "--config",
        CONFIG_PATH,
        "--subscription",
        "projects/my-project/subscriptions/retrain",
        "--bq_dataset",
        "traffic_prod",
        "--backend",
        "vertex",
    ]
    vertex = [
        "--vertex-region",
        "europe-west4",
        "--vertex-staging-bucket",
        "gs://bucket/staging",
        "--vertex-container-uri",
        SETTINGS.container_uri,
        "--vertex-service-account",
        SETTINGS.service_account,
        "--vertex-package-uri",
        SETTINGS.package_uris[0],
        "--vertex-config-uri",
        JOB.config_path,
    ]
    args = L._build_parser().parse_args([*base, "--registry", "gs://bucket/registry", *vertex])
    job = L.JobArgs(args.config, "my-project", "traffic_prod", args.registry)
    backend = L._vertex_backend(args, job)  # URIs given: nothing is built or uploaded
    assert backend.settings == SETTINGS
    assert L.main([*base, "--registry", str(tmp_path), *vertex]) == 2  # local registry
    assert L.main([*base, "--registry", "gs://bucket/registry"]) == 2  # no vertex flags


@pytest.mark.emulators
def test_monitor_confirms_an_online_drop_on_the_same_recent_rows(
    world, bigquery_client, gcp_project
):
    """Concept drift lowers every version's online accuracy: the monitor rolls back
    only if the previous version also scores better on the same labeled rows."""
    from dataset.tables import QUALITY_SCHEMA, training_schema
    from tests.helpers import traffic_payload
    from tests.transforms.test_inference import constant_model
    from trainer.runs import insert_typed_rows
    from transforms.labeling import training_row
    from transforms.validation import validate_payload

    online = [
        *[_quality("v1", m, 200, 0.9) for m in range(0, 5)],
        _quality("v2", 31, 150, 0.5),
        _quality("v2", 32, 150, 0.5),
    ]
    insert_typed_rows(
        bigquery_client,
        L.quality_table(gcp_project, world.dataset, TRAFFIC),
        online,
        QUALITY_SCHEMA,
    )
    promoted = 1767227400.0  # 2026-01-01T00:30:00Z, the FakeRegistry's promoted_at
    congested = [
        training_row(
            TRAFFIC,
            validate_payload(
                traffic_payload(f"S{i}", promoted + 10 + i, congested=1), TRAFFIC, f"r{i}"
            ),
            1,
            promoted + 10 + i,
            "inline",
        )
        for i in range(60)
    ]
    insert_typed_rows(
        bigquery_client,
        f"{gcp_project}.{world.dataset}.{TRAFFIC.tables.training_examples}",
        congested,
        training_schema(TRAFFIC),
    )
    says_yes, says_no = constant_model(5.0), constant_model(-5.0)

    # v2 (current) predicts "congested", right on every recent row: the drop is drift.
    kept = FakeRegistry()
    kept.load_keras = {"v2": says_yes, "v1": says_no}.get
    launcher = world.make_launcher(registry=kept)
    assert launcher.monitor_once() is False and not kept.rollbacks
    assert "not confirmed offline" in launcher.stats["monitor"]["note"]

    # v1 (previous) is the one right on the same rows: roll back.
    worse = FakeRegistry()
    worse.load_keras = {"v2": says_no, "v1": says_yes}.get
    assert world.make_launcher(registry=worse).monitor_once() is True
    assert "on the same 60 recent labeled rows" in worse.rollbacks[0][1]
