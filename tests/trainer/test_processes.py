"""Tests of trainer.processes (psutil): live, zombie, reused PID, process group."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.trainer.control_helpers import wait_for
from trainer import processes


def _sleeper(marker: str, *, new_session: bool = True) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)", marker],
        start_new_session=new_session,
    )


def test_a_live_process_runs_only_with_its_marker():
    child = _sleeper("run-abc")
    try:
        wait_for(lambda: "run-abc" in processes.command_line(child.pid), 10, "exec")
        assert processes.pid_alive(child.pid)
        assert processes.process_runs(child.pid, ["run-abc"])
        assert processes.process_runs(child.pid, ["other", "run-abc"])
        assert not processes.process_runs(child.pid, ["run-xyz"])  # a reused PID
        assert processes.group_alive(child.pid)
    finally:
        child.kill()


def test_a_zombie_or_gone_process_does_not_run():
    child = _sleeper("run-abc")
    wait_for(lambda: "run-abc" in processes.command_line(child.pid), 10, "exec")
    child.kill()
    wait_for(lambda: not processes.pid_alive(child.pid), 10, "the zombie")  # not reaped yet
    assert not processes.process_runs(child.pid, ["run-abc"])
    assert not processes.group_alive(child.pid)
    child.wait(5)
    assert not processes.pid_alive(child.pid)
    assert processes.command_line(child.pid) == ""


def test_this_process_is_alive_and_other_groups_are_not_ours():
    assert processes.pid_alive(os.getpid())
    assert processes.group_alive(os.getpgrp())
    assert not processes.pid_alive(2**22 + 12345)  # above the default pid_max
