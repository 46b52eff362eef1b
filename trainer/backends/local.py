"""The local backend: the trainer as a subprocess of the launcher, one log file per run."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dataset.times import rfc3339
from trainer import processes
from trainer.backends.base import TRAINER_MODULE, Backend, JobArgs, JobState
from trainer.claims import REFUSED_EXIT_CODE
from trainer.trigger_messages import Run


@dataclasses.dataclass
class LocalHandle:
    run_id: str
    pid: int
    log_path: str
    process: subprocess.Popen | None = None  # None when re-attached after a restart


def _log_tail(path: str, lines: int = 5) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            tail = collections.deque(f, maxlen=lines)
    except OSError:
        return ""
    return " | ".join(line.rstrip() for line in tail if line.strip())


class LocalProcessBackend(Backend):
    """Runs the trainer as a local subprocess; one log file per run.

    Args:
        job_args: the trainer's common arguments.
        state_dir: logs go to ``<state_dir>/logs/<run_id>.log`` (appended).
        program: the command before the arguments; default
            ``[sys.executable, "-m", "trainer.task"]``. Tests inject a stand-in
            that takes the same arguments.
        env: the child's environment (default: this process's).
        cwd: the child's working directory (default: this process's).
    """

    name = "local"

    def __init__(
        self,
        job_args: JobArgs,
        state_dir: str | os.PathLike,
        program: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ):
        self.job_args = job_args
        self.log_dir = Path(state_dir) / "logs"
        self.program = list(program or [sys.executable, "-m", TRAINER_MODULE])
        self.env = dict(env) if env is not None else None
        self.cwd = cwd

    def command(self, run: Run, attempt_id: str | None = None) -> list[str]:
        return self.program + self.job_args.trainer_args(run, self.name, attempt_id)

    def submit(self, run: Run, attempt_id: str | None = None) -> LocalHandle:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{run.run_id}.log"
        cmd = self.command(run, attempt_id)
        # In its own session: Ctrl-C on the launcher must not kill it at once.
        process = processes.start_logged(
            cmd,
            log_path,
            f"--- {rfc3339(time.time())} launcher: {' '.join(cmd)}\n",
            env=self.env,
            cwd=self.cwd,
        )
        return LocalHandle(run.run_id, process.pid, str(log_path), process)

    def poll(self, handle: LocalHandle) -> JobState:
        if handle.process is None:
            if processes.process_runs(handle.pid, [handle.run_id]):
                return JobState("running")
            return JobState("unknown", f"process {handle.pid} ended while the launcher was away")
        code = handle.process.poll()
        if code is None:
            return JobState("running")
        if code == 0:
            return JobState("exited")
        if code == REFUSED_EXIT_CODE:
            return JobState("refused", f"trainer refused: another trainer owns {handle.run_id}")
        tail = _log_tail(handle.log_path)
        return JobState(
            "failed", f"trainer exited with status {code}; log {handle.log_path}: {tail}"
        )

    def stop(self, handle: LocalHandle, timeout: float = 15.0) -> None:
        """SIGTERM to the job's process group; SIGKILL after ``timeout`` seconds."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(handle.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if handle.process is not None:
                if handle.process.poll() is not None:
                    return
            elif not processes.process_runs(handle.pid, [handle.run_id]):
                return
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(handle.pid, signal.SIGKILL)
        if handle.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                handle.process.wait(5)

    def describe(self, handle: LocalHandle) -> dict[str, Any]:
        return {"kind": "local", "pid": handle.pid, "log_path": handle.log_path}

    def adopt(self, run: Run, claim: Mapping[str, Any]) -> LocalHandle | None:
        """The claim's owner, if it is a live trainer process of ``run`` on this host."""
        if claim.get("host") != socket.gethostname() or not claim.get("pid"):
            return None
        log_path = self.log_dir / f"{run.run_id}.log"
        return self.reattach({"run_id": run.run_id, "pid": claim["pid"], "log_path": str(log_path)})

    def reattach(self, record: Mapping[str, Any]) -> LocalHandle | None:
        pid, run_id = int(record["pid"]), str(record["run_id"])
        if not processes.process_runs(pid, [run_id]):
            return None
        return LocalHandle(run_id, pid, str(record.get("log_path", "")), None)
