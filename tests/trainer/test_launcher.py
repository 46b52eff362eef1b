"""Tests of the launcher's service loop (trainer/launcher.py, trainer/supervisor.py).

The loop runs against the Pub/Sub and BigQuery emulators with a stand-in
trainer (``tests.trainer.control_helpers.FAKE_TRAINER``): a script that takes
trainer.task's arguments, claims the run with the real ``trainer.claims`` code,
records its status rows and logs each *training* to a file, so a test can count
how many trainers trained a run. The drills of issue 9 (a trigger delivered
twice; the launcher killed mid-run and restarted; a crash between the
``submitting`` record and the submit) are here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.trainer.control_helpers import (
    CONFIG_PATH,
    REPO,
    TRAFFIC,
    run_until,
    trigger_body,
    wait_for,
)
from trainer import claims, runs

pytestmark = pytest.mark.emulators


class Crash(BaseException):
    """A launcher process dying at this point (not an Exception: nothing catches it)."""


def _statuses(world, trigger_id):
    return [r["status"] for r in world.history(trigger_id)]


def test_same_trigger_twice_and_a_malformed_one_start_exactly_one_run(world):
    body = trigger_body("traffic-000001")
    world.publish(body, trigger_id="traffic-000001")
    world.publish(body, trigger_id="traffic-000001")  # a redelivery / replayed duplicate
    world.publish(b"{not json")
    # Two free slots: both copies may come in one pull; the second must still be skipped.
    launcher = world.make_launcher(max_concurrent=2)
    stats = run_until(
        launcher,
        lambda s: s["triggers_received"] == 3 and s["in_flight"] == 0 and s["runs_started"],
    )
    assert stats["runs_started"] == 1
    assert stats["duplicate_triggers"] == 1
    assert stats["malformed_triggers"] == 1
    assert stats["runs_succeeded"] == 1 and stats["runs_failed"] == 0
    history = world.history("traffic-000001")
    assert [(r["status"], r["seq"]) for r in history] == [
        ("queued", 1),
        ("submitting", 2),
        ("running", 3),
        ("succeeded", 4),
    ]
    assert {r["run_id"] for r in history} == {"run-traffic-000001"}
    assert len(world.trained("run-traffic-000001")) == 1
    # Everything was acked: nothing comes back.
    assert launcher.pull_once(timeout=2.0) == 0
    saved = json.loads(Path(launcher.stats_file).read_text())
    assert saved["triggers_received"] == 3 and saved["runs_started"] == 1
    log = (world.tmp_path / "state" / "logs" / "run-traffic-000001.log").read_text()
    assert "--trigger-id traffic-000001" in log and "--attempt-id" in log
    # The run is launched with the time its trigger arrived (its "launch" phase).
    received = float(log.split("--trigger-received-at ")[1].split()[0])
    assert received <= time.time() and saved["last_launch"]["run_id"] == "run-traffic-000001"
    assert 0 <= saved["last_launch"]["launch_s"] < 60
    # A later launcher (restart) sees the same trigger again: still a duplicate.
    world.publish(body, trigger_id="traffic-000001")
    again = world.make_launcher()
    again.recover()
    stats = run_until(again, lambda s: s["triggers_received"] == 1)
    assert stats["duplicate_triggers"] == 1 and stats["runs_started"] == 0


def test_queued_but_never_started_run_is_started_at_startup(world, bigquery_client, gcp_project):
    # A launcher recorded 'queued' and acked, then died before starting the job.
    runs.record_run_status(
        bigquery_client,
        runs.runs_table(gcp_project, world.dataset, TRAFFIC),
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
    stats = run_until(launcher, lambda s: s["runs_succeeded"] == 1)
    assert stats["runs_recovered"] == 1 and stats["runs_started"] == 1
    assert stats["triggers_received"] == 0
    assert _statuses(world, "traffic-000007") == ["queued", "submitting", "running", "succeeded"]
    # Nothing queued any more: a second start-up recovers nothing.
    second = world.make_launcher()
    second.recover()
    assert not second.pending


def test_triggers_wait_for_a_free_slot_and_crashes_are_recorded(world, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_SECONDS", "1.5")
    monkeypatch.setenv("FAKE_OUTCOME_traffic_000001", "crash")
    monkeypatch.setenv("FAKE_OUTCOME_traffic_000002", "rejected")
    world.publish(trigger_body("traffic-000001"), trigger_id="traffic-000001")
    world.publish(trigger_body("traffic-000002", reason="quality"), trigger_id="traffic-000002")
    launcher = world.make_launcher(max_concurrent=1)
    max_in_flight = 0

    def done(s):
        nonlocal max_in_flight
        max_in_flight = max(max_in_flight, s["in_flight"])
        return s["runs_failed"] + s["runs_rejected"] == 2

    stats = run_until(launcher, done)
    assert max_in_flight == 1
    assert stats["runs_started"] == 2 and stats["triggers_received"] == 2
    crashed, rejected = world.history("traffic-000001"), world.history("traffic-000002")
    assert [r["status"] for r in crashed] == ["queued", "submitting", "running", "failed"]
    assert "exited with status 3" in crashed[-1]["error"]
    assert "fake trainer: crashing" in crashed[-1]["error"]
    assert [r["status"] for r in rejected] == ["queued", "submitting", "running", "rejected"]
    # Whichever came second waited (unacked, not even queued) until the first run ended.
    first, second = sorted([crashed, rejected], key=lambda h: h[0]["recorded_at"])
    assert second[0]["recorded_at"] >= first[-1]["recorded_at"]


def _cli(world, gcp_project, state_dir, stats_file, *extra):
    return [
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
        world.registry,
        "--poll-seconds",
        "0.5",
        "--no-monitor",
        "--state-dir",
        str(state_dir),
        "--stats-file",
        str(stats_file),
        "--trainer-program",
        f"{sys.executable} {world.script}",
        *extra,
    ]


def test_cli_sigterm_requeues_the_running_job(world, gcp_project):
    stats_file = world.tmp_path / "stats.json"
    world.publish(trigger_body("traffic-000005"), trigger_id="traffic-000005")
    env = {**os.environ, "FAKE_TRAIN_SECONDS": "60"}
    cmd = _cli(world, gcp_project, world.tmp_path / "cli-state", stats_file, "--grace-seconds", "1")
    proc = subprocess.Popen(
        [*cmd, "--duration", "50"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: _statuses(world, "traffic-000005")[-1:] == ["running"], 30, "running")
        assert json.loads(stats_file.read_text())["in_flight"] == 1
        assert claims.read(world.registry, "run-traffic-000005")["pid"]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()[-2000:]
    final = json.loads(out.decode().strip().splitlines()[-1])
    assert final["runs_started"] == 1 and final["runs_requeued"] == 1 and final["in_flight"] == 0
    assert json.loads(stats_file.read_text())["runs_requeued"] == 1
    # Re-queued for the next start (recorded after the job was stopped), claim released.
    assert _statuses(world, "traffic-000005") == ["queued", "submitting", "running", "queued"]
    assert claims.read(world.registry, "run-traffic-000005") is None
    assert "SIGTERM" in err.decode()


def test_restarted_launcher_reattaches_to_a_running_job(world, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_SECONDS", "3")
    world.publish(trigger_body("traffic-000009"), trigger_id="traffic-000009")
    first = world.make_launcher()
    run_until(first, lambda s: s["runs_started"] == 1)
    # The first launcher dies here (no shutdown); its job keeps running.
    second = world.make_launcher()
    second.recover()
    assert list(second.in_flight) == ["run-traffic-000009"] and not second.pending
    stats = run_until(second, lambda s: s["runs_succeeded"] == 1)
    assert stats["runs_started"] == 0  # not started twice
    assert _statuses(world, "traffic-000009") == ["queued", "submitting", "running", "succeeded"]
    assert not list((world.tmp_path / "state" / "inflight").glob("*.json"))
    assert len(world.trained("run-traffic-000009")) == 1


# ----------------------------------------------------------------- races and drills


def _crash_after_submit(world, monkeypatch, trigger_id):
    """A launcher takes the trigger, submits its job, then dies before recording the handle."""
    world.publish(trigger_body(trigger_id), trigger_id=trigger_id)
    launcher = world.make_launcher()
    submit = launcher.backend.submit

    def submit_then_crash(run, attempt_id=None):
        submit(run, attempt_id)
        raise Crash(run.run_id)

    monkeypatch.setattr(launcher.backend, "submit", submit_then_crash)
    with pytest.raises(Crash):
        run_until(launcher, lambda s: False, timeout=20)


def test_crash_between_submitting_and_handle_never_gives_two_trainers(world, monkeypatch):
    """Issue 9 race: the job was submitted, the launcher died before recording it.

    The trainer starts slowly, so the restarted launcher finds the run unclaimed
    and submits it again: two trainers race for the claim; one trains, the other
    refuses, and the launcher re-attaches to the one that trains.
    """
    monkeypatch.setenv("FAKE_START_SECONDS", "2")
    monkeypatch.setenv("FAKE_TRAIN_SECONDS", "2")
    _crash_after_submit(world, monkeypatch, "traffic-000011")
    assert _statuses(world, "traffic-000011") == ["queued", "submitting"]

    second = world.make_launcher()
    second.recover()
    assert [r.run_id for r in second.pending] == ["run-traffic-000011"]
    stats = run_until(second, lambda s: s["runs_succeeded"] == 1 and not s["in_flight"], timeout=60)
    assert len(world.trained("run-traffic-000011")) == 1  # one trainer trained
    assert stats["runs_failed"] == 0
    log = (world.tmp_path / "state" / "logs" / "run-traffic-000011.log").read_text()
    assert log.count("fake trainer: refused") == 1  # the other trainer refused
    statuses = _statuses(world, "traffic-000011")
    assert statuses.count("running") == 1 and statuses[-1] == "succeeded"


def test_crash_after_submit_adopts_the_trainer_that_owns_the_run(world, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_SECONDS", "3")
    _crash_after_submit(world, monkeypatch, "traffic-000012")
    wait_for(lambda: world.trained("run-traffic-000012"), 20, "the first trainer to train")

    second = world.make_launcher()
    second.recover()
    assert list(second.in_flight) == ["run-traffic-000012"] and not second.pending
    stats = run_until(second, lambda s: s["runs_succeeded"] == 1)
    assert stats["runs_adopted"] == 1 and stats["runs_started"] == 0
    assert _statuses(world, "traffic-000012") == ["queued", "submitting", "running", "succeeded"]
    assert len(world.trained("run-traffic-000012")) == 1


def test_drill_trigger_delivered_twice_to_two_launchers_gives_one_training_run(world, monkeypatch):
    """Both launchers check for the trigger before either has recorded it."""
    monkeypatch.setenv("FAKE_TRAIN_SECONDS", "2")
    a = world.make_launcher(state="state-a")
    b = world.make_launcher(state="state-b")
    for launcher in (a, b):
        launcher._ack = lambda ack_id: None  # the messages were not pulled
        launcher.jobs.latest = lambda trigger_id: None  # neither sees the other's row yet
    data = json.dumps(trigger_body("traffic-000013")).encode()
    assert a.handle_message("ack-a", data, {}) == "queued"
    assert b.handle_message("ack-b", data, {}) == "queued"
    for launcher in (a, b):
        del launcher.jobs.latest  # back to the real query
    wait_for(
        lambda: (a.reap(), b.reap(), not a.in_flight and not b.in_flight)[-1], 60, "both settled"
    )
    assert len(world.trained("run-traffic-000013")) == 1
    statuses = _statuses(world, "traffic-000013")
    assert statuses.count("running") == 1 and statuses[-1] == "succeeded"
    total = {k: a.stats[k] + b.stats[k] for k in ("runs_succeeded", "runs_failed")}
    assert total["runs_failed"] == 0 and total["runs_succeeded"] >= 1


def test_drill_launcher_killed_mid_run_and_restarted(world, gcp_project):
    """SIGKILL the launcher process while its trainer runs; start a new one."""
    state_dir, stats_file = world.tmp_path / "cli-state", world.tmp_path / "stats.json"
    world.publish(trigger_body("traffic-000014"), trigger_id="traffic-000014")
    env = {**os.environ, "FAKE_TRAIN_SECONDS": "6"}
    cmd = _cli(world, gcp_project, state_dir, stats_file)
    first = subprocess.Popen([*cmd, "--duration", "60"], cwd=REPO, env=env)
    try:
        wait_for(lambda: _statuses(world, "traffic-000014")[-1:] == ["running"], 30, "running")
        first.kill()  # no shutdown, no re-queue: the trainer keeps running on its own
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    second = subprocess.run(
        [*cmd, "--duration", "20"], cwd=REPO, env=env, capture_output=True, timeout=120
    )
    assert second.returncode == 0, second.stderr.decode()[-2000:]
    final = json.loads(second.stdout.decode().strip().splitlines()[-1])
    assert final["runs_started"] == 0 and final["runs_succeeded"] == 1
    assert _statuses(world, "traffic-000014") == ["queued", "submitting", "running", "succeeded"]
    assert len(world.trained("run-traffic-000014")) == 1  # neither lost nor trained twice
