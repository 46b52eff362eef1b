"""The local backend: the trainer as a subprocess of the launcher, one log file per run.

Cold (the default): each run starts ``python -m trainer.task``, which spends
about 10 s (on the 2-core development machine) starting Python and importing
TensorFlow before it reads a row. Warm (``warm=True``, the launcher's
``--warm-trainer``): one spare ``python -m trainer.worker`` is started ahead,
imports TensorFlow, warms up on the config's model shape and waits; a run is
handed to it on stdin, and the next spare starts at once (it imports while
the run trains). A worker serves one run, so no two runs share a TensorFlow
process. A spare costs the memory of an idle TensorFlow process (about
0.7 GiB RSS here) and exits by itself when the launcher goes away (its stdin
closes). A run that finds the spare still importing waits for the rest of
the import (the trainer's ``interpreter`` phase shows it), still less than a
cold start; a run that finds it dead starts cold.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import os
import secrets
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

logger = logging.getLogger(__name__)
WORKER_MODULE = "trainer.worker"


@dataclasses.dataclass
class LocalHandle:
    run_id: str
    pid: int
    log_path: str
    process: subprocess.Popen | None = None  # None when re-attached after a restart
    marker: str | None = None  # a warm worker's token (its command line names no run)


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
        warm: keep one warm ``trainer.worker`` ready and hand runs to it (see
            the module docstring); a run finding no live spare starts cold.
        worker_program: the command that starts a warm worker (default
            ``[sys.executable, "-m", "trainer.worker"]``; tests inject one).
    """

    name = "local"

    def __init__(
        self,
        job_args: JobArgs,
        state_dir: str | os.PathLike,
        program: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        warm: bool = False,
        worker_program: Sequence[str] | None = None,
    ):
        self.job_args = job_args
        self.log_dir = Path(state_dir) / "logs"
        self.program = list(program or [sys.executable, "-m", TRAINER_MODULE])
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.warm = warm
        self.worker_program = list(worker_program or [sys.executable, "-m", WORKER_MODULE])
        self._spare: tuple[subprocess.Popen, str] | None = None  # (process, marker)
        if warm:
            self._start_spare()

    # ------------------------------------------------------------ warm workers

    def _start_spare(self) -> None:
        """Starts the next warm worker (it imports TensorFlow, then waits for a job)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        marker = f"warm-{secrets.token_hex(6)}"
        with open(self.log_dir / "warm-workers.log", "ab") as log:
            process = subprocess.Popen(
                [*self.worker_program, "--marker", marker, "--config", self.job_args.config_path],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
                close_fds=True,
            )
        self._spare = (process, marker)
        logger.info("warm trainer worker %s started (pid %d)", marker, process.pid)

    def _hand_to_spare(self, run: Run, attempt_id: str | None, log_path: Path) -> LocalHandle:
        """Gives the run to the spare worker, or raises OSError if it cannot take it."""
        assert self._spare is not None
        process, marker = self._spare
        self._spare = None
        if process.poll() is not None:
            raise OSError(f"warm worker {marker} exited with status {process.returncode}")
        args = self.job_args.trainer_args(run, self.name, attempt_id)
        with open(log_path, "ab") as log:
            log.write(
                f"--- {rfc3339(time.time())} launcher: warm worker {marker} (pid "
                f"{process.pid}): {' '.join(args)}\n".encode()
            )
        job = json.dumps({"argv": args, "log_path": str(log_path)}) + "\n"
        try:
            assert process.stdin is not None
            process.stdin.write(job.encode())
            process.stdin.close()
        except (BrokenPipeError, ValueError) as e:
            raise OSError(f"warm worker {marker} did not take the job: {e}") from e
        return LocalHandle(run.run_id, process.pid, str(log_path), process, marker)

    def close(self) -> None:
        """Stops the spare worker, if any (closing its stdin makes it exit)."""
        spare, self._spare = self._spare, None
        if spare is not None:
            process, _ = spare
            with contextlib.suppress(OSError, ValueError):
                if process.stdin is not None:
                    process.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def command(self, run: Run, attempt_id: str | None = None) -> list[str]:
        return self.program + self.job_args.trainer_args(run, self.name, attempt_id)

    def submit(self, run: Run, attempt_id: str | None = None) -> LocalHandle:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{run.run_id}.log"
        if self._spare is not None:
            try:
                return self._hand_to_spare(run, attempt_id, log_path)
            except OSError as e:
                logger.warning("%s; starting %s cold", e, run.run_id)
            finally:
                # The next spare starts now: importing while this run trains, it is
                # ready about one import after this trigger, not one run + one import.
                self._start_spare()
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
            if processes.process_runs(handle.pid, [handle.marker or handle.run_id]):
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
            elif not processes.process_runs(handle.pid, [handle.marker or handle.run_id]):
                return
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(handle.pid, signal.SIGKILL)
        if handle.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                handle.process.wait(5)

    def describe(self, handle: LocalHandle) -> dict[str, Any]:
        marker = {"marker": handle.marker} if handle.marker else {}
        return {"kind": "local", "pid": handle.pid, "log_path": handle.log_path, **marker}

    def adopt(self, run: Run, claim: Mapping[str, Any]) -> LocalHandle | None:
        """The claim's owner, if it is a live trainer process of ``run`` on this host."""
        if claim.get("host") != socket.gethostname() or not claim.get("pid"):
            return None
        log_path = self.log_dir / f"{run.run_id}.log"
        return self.reattach({"run_id": run.run_id, "pid": claim["pid"], "log_path": str(log_path)})

    def reattach(self, record: Mapping[str, Any]) -> LocalHandle | None:
        pid, run_id = int(record["pid"]), str(record["run_id"])
        marker = record.get("marker") or None  # a warm worker's command line names no run
        if not processes.process_runs(pid, [marker or run_id]):
            return None
        return LocalHandle(run_id, pid, str(record.get("log_path", "")), None, marker)
