"""Tests of the local backend (trainer/backends/local.py) with stand-in trainer programs."""

from __future__ import annotations

import dataclasses
import socket
import sys
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
    command = backend.command(received, "attempt-1")
    assert command[-4:] == ["--attempt-id", "attempt-1", "--trigger-received-at", "1795690000.123"]
