"""Is that process still ours? Process checks on top of psutil, in one place.

The launcher's local backend re-attaches to trainer processes after a restart,
and the local emulator stack (``local.emulators``) stops the emulators it
started; both only know a PID from a file, and a PID may have been reused by an
unrelated process since. So a process counts as running only if it exists, is
not a zombie, and its command line contains a marker (the run id, the
emulator's name).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import psutil

_EXEC_RETRIES = 10  # an exec in progress shows an empty command line for a moment
_EXEC_WAIT_SECONDS = 0.02


def start_logged(
    command: Sequence[str],
    log_path: str | Path,
    header: str,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
) -> subprocess.Popen[bytes]:
    """Starts ``command`` in its own session, its output appended to ``log_path``.

    ``header`` is written to the log first. The child reads nothing (stdin is
    /dev/null) and gets a new session, so a Ctrl-C on the parent does not reach it.
    """
    with open(log_path, "ab") as log:
        log.write(header.encode())
        log.flush()
        return subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )


def _live(process: psutil.Process) -> bool:
    return process.is_running() and process.status() != psutil.STATUS_ZOMBIE


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        return _live(psutil.Process(pid))
    except (psutil.NoSuchProcess, ValueError):
        return False
    except psutil.AccessDenied:
        return True


def command_line(pid: int) -> str:
    """Process ``pid``'s command line, space-joined ("" if gone or unreadable)."""
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except (psutil.Error, ValueError):
        return ""


def process_runs(pid: int, markers: Iterable[str]) -> bool:
    """Whether ``pid`` is alive, not a zombie, and its command line contains any marker.

    A live process whose command line cannot be read (another user's) counts as
    running: it cannot be told apart, and stopping it would fail anyway.
    """
    wanted = [m for m in markers if m]
    try:
        process = psutil.Process(pid)
        for _ in range(_EXEC_RETRIES):
            if not _live(process):
                return False
            cmdline = " ".join(process.cmdline())
            if cmdline:
                return not wanted or any(m in cmdline for m in wanted)
            time.sleep(_EXEC_WAIT_SECONDS)
    except (psutil.NoSuchProcess, psutil.ZombieProcess, ValueError):
        return False
    except psutil.AccessDenied:
        return True
    return True  # alive; command line still empty


def group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is left in process group ``pgid``."""
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and _live(process):
                return True
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return False
