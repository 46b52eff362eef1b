"""Tests of the local backend (trainer/backends/local.py) with stand-in trainer programs."""

from __future__ import annotations

import dataclasses
import socket
import sys
import textwrap
import time
from pathlib import Path

from trainer.backends.base import JobArgs, JobState
from trainer.backends.local import LocalProcessBackend
from trainer.claims import REFUSED_EXIT_CODE
from trainer.trigger_messages import Run

JOB = JobArgs("c.yaml", "my-project", "d", "/tmp/registry")
RUN = Run("run-traffic-000042", "traffic-000042", "traffic", "quality")


def _wait_done(backend, handle, timeout=20.0) -> JobState:
    deadline = time.monotonic() + timeout
    while (state := backend.poll(handle)).state == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    return state


def test_local_backend_failure_detail_and_log(tmp_path):
    program = [sys.executable, "-c", "import sys; print('boom: bad data'); sys.exit(3)"]
    backend = LocalProcessBackend(JOB, tmp_path, program=program)
    handle = backend.submit(RUN)
    state = _wait_done(backend, handle)
    assert state.state == "failed"
    assert "status 3" in state.detail and "boom: bad data" in state.detail
    assert Path(handle.log_path) == tmp_path / "logs" / "run-traffic-000042.log"
    # The record a restarted launcher reads: the process is gone.
    assert backend.reattach({"run_id": RUN.run_id, **backend.describe(handle)}) is None


def test_a_trainer_that_refuses_the_run_is_not_a_failure(tmp_path):
    program = [sys.executable, "-c", f"import sys; sys.exit({REFUSED_EXIT_CODE})"]
    backend = LocalProcessBackend(JOB, tmp_path, program=program)
    state = _wait_done(backend, backend.submit(RUN, "attempt-1"))
    assert state == JobState("refused", "trainer refused: another trainer owns run-traffic-000042")
    log = (tmp_path / "logs" / "run-traffic-000042.log").read_text()
    assert "--attempt-id attempt-1" in log


def test_adopts_a_live_owner_on_this_host_only(tmp_path):
    # A process whose command line names the run, like a trainer of it.
    program = [sys.executable, "-c", "import time; time.sleep(30)"]
    backend = LocalProcessBackend(JOB, tmp_path, program=program)
    handle = backend.submit(RUN)
    try:
        claim = {"host": socket.gethostname(), "pid": handle.pid}
        adopted = backend.adopt(RUN, claim)
        assert adopted is not None and adopted.pid == handle.pid and adopted.process is None
        assert backend.poll(adopted).state == "running"
        assert backend.adopt(RUN, {**claim, "host": "another-host"}) is None
        other = Run("run-other", "other", "traffic")  # a live pid, but not that run's trainer
        assert backend.adopt(other, claim) is None
    finally:
        backend.stop(handle, timeout=5)
    assert backend.poll(handle).state == "failed"  # stopped by a signal


def test_the_trainer_gets_the_time_its_trigger_arrived(tmp_path):
    backend = LocalProcessBackend(JOB, tmp_path)
    assert "--trigger-received-at" not in backend.command(RUN)  # a recovered run: unknown
    received = dataclasses.replace(RUN, received_at=1795690000.1234)
    before = time.time()
    command = backend.command(received, "attempt-1")
    assert command[-6:-1] == [
        "--attempt-id", "attempt-1", "--trigger-received-at", "1795690000.123", "--submitted-at",
    ]  # fmt: skip
    # built right before the submit (rounded to the millisecond, either way)
    assert before - 0.001 <= float(command[-1]) <= time.time() + 0.001


# A stand-in warm worker: reads the job line, logs its arguments, then sleeps
# (so a test can see it running) or exits with the status the job names.
STAND_IN_WORKER = textwrap.dedent(
    """
    import json, sys, time
    job = json.loads(sys.stdin.readline())
    with open(job["log_path"], "a") as log:
        log.write("stand-in worker ran: " + " ".join(job["argv"]) + "\\n")
    if "--sleep" in sys.argv:
        time.sleep(30)
    """
)


def _worker(*flags: str) -> list[str]:
    return [sys.executable, "-c", STAND_IN_WORKER, *flags]


def _wait_until(condition, timeout=20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_a_warm_backend_hands_runs_to_its_spare_and_replaces_it(tmp_path):
    cold = [sys.executable, "-c", "print('cold trainer')"]
    backend = LocalProcessBackend(JOB, tmp_path, program=cold, warm=True, worker_program=_worker())
    try:
        first_spare = backend._spare[0]
        handle = backend.submit(RUN, "attempt-1")
        assert handle.pid == first_spare.pid and handle.marker.startswith("warm-")
        # One run per worker: the next spare starts at once, while this run trains.
        assert backend._spare is not None and backend._spare[0].pid != first_spare.pid
        assert _wait_done(backend, handle).state == "exited"
        log = Path(handle.log_path).read_text()
        assert "launcher: warm worker" in log and "cold trainer" not in log
        assert "stand-in worker ran: --config c.yaml" in log and "--attempt-id attempt-1" in log
        second = backend.submit(dataclasses.replace(RUN, run_id="run-2"))
        assert second.marker not in (None, handle.marker)  # the second spare took it
        assert _wait_done(backend, second).state == "exited"
    finally:
        backend.close()
    assert backend._spare is None


def test_a_dead_spare_means_a_cold_start(tmp_path):
    cold = [sys.executable, "-c", "print('cold trainer')"]
    dead = [sys.executable, "-c", "import sys; sys.exit(0)"]
    backend = LocalProcessBackend(JOB, tmp_path, program=cold, warm=True, worker_program=dead)
    try:
        backend._spare[0].wait(20)
        handle = backend.submit(RUN)
        assert handle.marker is None
        assert _wait_done(backend, handle).state == "exited"
        assert "cold trainer" in Path(handle.log_path).read_text()
    finally:
        backend.close()


def test_a_restarted_launcher_reattaches_to_a_warm_worker_by_its_marker(tmp_path):
    backend = LocalProcessBackend(JOB, tmp_path, warm=True, worker_program=_worker("--sleep"))
    handle = backend.submit(RUN)
    try:
        record = {"run_id": RUN.run_id, **backend.describe(handle)}
        assert record["marker"] == handle.marker
        again = LocalProcessBackend(JOB, tmp_path)  # the restarted launcher
        adopted = again.reattach(record)
        assert adopted is not None and adopted.pid == handle.pid
        assert again.poll(adopted).state == "running"
        assert again.reattach({**record, "marker": "warm-other"}) is None
        again.stop(adopted, timeout=5)
        assert again.poll(adopted).state == "unknown"
    finally:
        backend.stop(handle, timeout=5)
        backend.close()


def test_closing_stops_an_idle_spare(tmp_path):
    backend = LocalProcessBackend(JOB, tmp_path, warm=True, worker_program=_worker("--sleep"))
    spare = backend._spare[0]
    backend.close()
    assert spare.poll() is not None


def test_the_real_worker_runs_the_trainer_it_is_given(tmp_path):
    """``trainer.worker`` imports TensorFlow, then runs ``trainer.task`` for its one job."""
    job = JobArgs("configs/nope.yaml", "my-project", "d", str(tmp_path / "registry"))
    backend = LocalProcessBackend(job, tmp_path, warm=True)
    try:
        ready = tmp_path / "logs" / "warm-workers.log"
        _wait_until(lambda: "[worker] ready" in ready.read_text(), timeout=240)
        handle = backend.submit(RUN)
        state = _wait_done(backend, handle, timeout=120)
        log = Path(handle.log_path).read_text()
        assert state.state == "failed" and "status 1" in state.detail, (state, log)
        assert "got the job (warm" in log
        assert '"status": "failed"' in log and "nope.yaml" in log  # the trainer's own summary
    finally:
        backend.close()
