"""Start, stop and health-check the local Pub/Sub and BigQuery emulators.

Each emulator runs as a subprocess in its own process group (so stopping it
also stops anything it spawned), logs to ``<state_dir>/<name>.log`` and
records its PID in ``<state_dir>/<name>.pid`` (plus ``<name>.json`` with its
ports and command), so a later ``stop`` from another process finds it.

* Pub/Sub: the official Java emulator from the Google Cloud SDK
  (``gcloud components install pubsub-emulator`` or the Debian package
  ``google-cloud-cli-pubsub-emulator``), started directly rather than through
  the ``gcloud beta emulators`` wrapper, whose PID does not own the Java server.
* BigQuery: ``bqemulator`` (PyPI, DuckDB-backed, REST + gRPC).

Python API (tests, scripts)::

    with emulators(".local/run", pubsub_port=None) as emu:  # None: a free port
        os.environ.update(emu.env)

CLI::

    python -m local.emulators start --state-dir .local/run --pubsub-port 8185 \\
        --bq-rest-port 9150 --bq-grpc-port 9160   # prints `export VAR=value` lines
    python -m local.emulators status --state-dir .local/run
    python -m local.emulators stop --state-dir .local/run
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from local.credentials import ENV_VAR as CREDENTIALS_ENV_VAR
from local.credentials import ensure_fake_credentials
from local.emulator_install import (  # noqa: F401 (re-exported: setup_env.sh, tests)
    PUBSUB_INSTALL_HINT,
    EmulatorNotInstalledError,
    bigquery_emulator_command,
    ensure_duckdb_spatial,
    find_pubsub_emulator,
    pubsub_emulator_command,
)
from trainer import processes

logger = logging.getLogger(__name__)

PUBSUB = "pubsub-emulator"
BIGQUERY = "bigquery-emulator"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PROJECT = "local-project"
DEFAULT_PUBSUB_PORT = 8085
DEFAULT_BQ_REST_PORT = 9050
DEFAULT_BQ_GRPC_PORT = 9060
DEFAULT_START_TIMEOUT = 90.0
DEFAULT_STOP_TIMEOUT = 15.0

# Fragments of a process's command line that identify it as our emulator, so a
# stale PID file never makes us signal an unrelated process that reused the PID.
_CMDLINE_MARKERS = {PUBSUB: ("pubsub-emulator",), BIGQUERY: ("bqemulator",)}

# Popen objects of emulators started by this Python process, to reap them.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@dataclasses.dataclass
class EmulatorInfo:
    """A running emulator, as recorded in its state files."""

    name: str
    pid: int
    host: str
    ports: dict[str, int]
    log_path: str
    command: list[str]
    project: str = DEFAULT_PROJECT
    started_at: float = 0.0
    reused: bool = False

    @property
    def port(self) -> int:
        """The main port (Pub/Sub gRPC+HTTP port, BigQuery REST port)."""
        return self.ports["rest"] if "rest" in self.ports else self.ports["port"]

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that point Google clients at this emulator."""
        if self.name == PUBSUB:
            return {"PUBSUB_EMULATOR_HOST": f"{self.host}:{self.ports['port']}"}
        return {
            # google-cloud-bigquery needs the scheme.
            "BIGQUERY_EMULATOR_HOST": f"http://{self.host}:{self.ports['rest']}",
            "BIGQUERY_EMULATOR_GRPC_HOST": f"{self.host}:{self.ports['grpc']}",
        }

    def healthy(self, timeout: float = 2.0) -> bool:
        """Whether the emulator answers its health check."""
        if self.name == PUBSUB:
            return pubsub_healthy(self.host, self.ports["port"], timeout)
        return bigquery_healthy(self.host, self.ports["rest"], timeout)


@dataclasses.dataclass
class LocalEmulators:
    """Both emulators plus the fake credentials file."""

    pubsub: EmulatorInfo | None
    bigquery: EmulatorInfo | None
    credentials_path: Path
    project: str = DEFAULT_PROJECT

    @property
    def env(self) -> dict[str, str]:
        """All environment variables a client or the pipeline needs."""
        env = {CREDENTIALS_ENV_VAR: str(self.credentials_path)}
        for info in (self.pubsub, self.bigquery):
            if info is not None:
                env.update(info.env)
        return env


# --------------------------------------------------------------------------- ports, health


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = DEFAULT_HOST) -> bool:
    """Whether something listens on, or holds, ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        if s.connect_ex((host, port)) == 0:
            return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR: connections in TIME_WAIT do not count (servers reuse those ports).
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http_get(url: str, timeout: float) -> tuple[int, str] | None:
    try:
        with _NO_PROXY.open(url, timeout=timeout) as resp:
            return resp.status, resp.read(4096).decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, ""
    except (OSError, ValueError):
        return None


def pubsub_healthy(host: str, port: int, timeout: float = 2.0) -> bool:
    """Whether a Pub/Sub emulator answers ``GET /`` with ``Ok``."""
    got = _http_get(f"http://{host}:{port}/", timeout)
    return got is not None and got[0] == 200 and got[1].strip() == "Ok"


def bigquery_healthy(host: str, port: int, timeout: float = 2.0) -> bool:
    """Whether a bqemulator answers ``GET /healthz`` with status ok."""
    got = _http_get(f"http://{host}:{port}/healthz", timeout)
    if got is None or got[0] != 200:
        return False
    try:
        return json.loads(got[1]).get("status") == "ok"
    except (ValueError, AttributeError):
        return False


def healthy_from_env(env: dict[str, str] | None = None) -> dict[str, bool]:
    """Health of the emulators that ``PUBSUB_EMULATOR_HOST``/``BIGQUERY_EMULATOR_HOST`` name."""
    env = os.environ if env is None else env
    result: dict[str, bool] = {}
    ps = env.get("PUBSUB_EMULATOR_HOST")
    if ps:
        host, _, port = ps.rpartition(":")
        result[PUBSUB] = port.isdigit() and pubsub_healthy(host, int(port))
    bq = env.get("BIGQUERY_EMULATOR_HOST")
    if bq:
        host, _, port = bq.split("://", 1)[-1].rstrip("/").rpartition(":")
        result[BIGQUERY] = port.isdigit() and bigquery_healthy(host, int(port))
    return result


# --------------------------------------------------------------------------- processes


def _state_paths(state_dir: Path, name: str) -> tuple[Path, Path, Path]:
    return state_dir / f"{name}.pid", state_dir / f"{name}.json", state_dir / f"{name}.log"


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        _CHILDREN.pop(pid, None)


def pid_alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie (reaps our own exited children)."""
    _reap(pid)
    return processes.pid_alive(pid)


def group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is left in process group ``pgid``."""
    _reap(pgid)
    return processes.group_alive(pgid)


def _is_our_emulator(info: EmulatorInfo) -> bool:
    _reap(info.pid)
    return processes.process_runs(info.pid, _CMDLINE_MARKERS.get(info.name, ()))


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def read_info(state_dir: str | os.PathLike[str], name: str) -> EmulatorInfo | None:
    """The recorded emulator ``name`` in ``state_dir``, or None if there is no record."""
    _, info_path, _ = _state_paths(Path(state_dir), name)
    try:
        raw = json.loads(info_path.read_text(encoding="utf-8"))
        return EmulatorInfo(**raw)
    except (OSError, ValueError, TypeError):
        return None


def _remove_state(state_dir: Path, name: str) -> None:
    pid_path, info_path, _ = _state_paths(state_dir, name)
    pid_path.unlink(missing_ok=True)
    info_path.unlink(missing_ok=True)


def _start(
    state_dir: Path,
    name: str,
    command: list[str],
    host: str,
    ports: dict[str, int],
    health: Callable[[], bool],
    project: str,
    timeout: float,
) -> EmulatorInfo:
    state_dir.mkdir(parents=True, exist_ok=True)
    existing = read_info(state_dir, name)
    if existing is not None:
        if _is_our_emulator(existing):
            if existing.host == host and existing.ports == ports and existing.healthy():
                logger.info("%s already running (pid %d), reusing it", name, existing.pid)
                existing.reused = True
                return existing
            raise RuntimeError(
                f"{name} from {state_dir} is already running (pid {existing.pid}, "
                f"{existing.host} {existing.ports}); stop it first: "
                f"python -m local.emulators stop --state-dir {state_dir}"
            )
        _remove_state(state_dir, name)
    for label, port in ports.items():
        if port_in_use(port, host):
            which = "" if label == "port" else f" ({label} port)"
            raise RuntimeError(
                f"Cannot start {name}: {host}:{port}{which} is already in use, "
                "maybe by another emulator. Choose another port (e.g. PUBSUB_PORT, "
                "BQ_REST_PORT, BQ_GRPC_PORT for run_local.sh) or stop what holds it."
            )
    pid_path, info_path, log_path = _state_paths(state_dir, name)
    proc = processes.start_logged(
        command,
        log_path,
        f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {shlex.join(command)}\n",
    )
    _CHILDREN[proc.pid] = proc
    info = EmulatorInfo(
        name=name,
        pid=proc.pid,
        host=host,
        ports=dict(ports),
        log_path=str(log_path),
        command=command,
        project=project,
        started_at=time.time(),
    )
    pid_path.write_text(f"{proc.pid}\n", encoding="utf-8")
    info_path.write_text(json.dumps(dataclasses.asdict(info), indent=2), encoding="utf-8")
    try:
        _wait_healthy(info, proc, health, timeout)
    except BaseException:
        stop_process(info, verify=False)
        _remove_state(state_dir, name)
        raise
    logger.info("%s up (pid %d) on %s %s; log %s", name, proc.pid, host, ports, log_path)
    return info


def _wait_healthy(
    info: EmulatorInfo,
    proc: subprocess.Popen[bytes],
    health: Callable[[], bool],
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    log_path = Path(info.log_path)
    while True:
        code = proc.poll()
        if code is not None:
            raise RuntimeError(
                f"{info.name} exited with code {code} during start-up; see {log_path}. "
                f"Last lines:\n{_tail(log_path)}"
            )
        if health():
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{info.name} (pid {info.pid}) was not healthy after {timeout:.0f} s; "
                f"see {log_path}. Last lines:\n{_tail(log_path)}"
            )
        time.sleep(0.25)


def stop_process(
    info: EmulatorInfo, timeout: float = DEFAULT_STOP_TIMEOUT, verify: bool = True
) -> bool:
    """Stops an emulator's process group: SIGTERM, then SIGKILL after ``timeout``.

    Args:
        info: The emulator's record.
        timeout: Seconds to wait after SIGTERM before SIGKILL.
        verify: Check first that the PID still runs the emulator (a PID file may
            be stale and the PID reused); False only for a process we just started.

    Returns:
        True if a process was signalled, False if it was already gone.
    """
    pgid = info.pid  # started with start_new_session: the leader's pid is the group id
    if not group_alive(pgid):
        _reap(pgid)
        return False
    if verify and pid_alive(info.pid) and not _is_our_emulator(info):
        logger.warning(
            "pid %d is not %s any more (cmdline %r); not signalling it",
            info.pid,
            info.name,
            processes.command_line(info.pid),
        )
        return False
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not group_alive(pgid):
                _reap(pgid)
                logger.info("stopped %s (pid %d)", info.name, info.pid)
                return True
            time.sleep(0.1)
        if sig == signal.SIGTERM:
            logger.warning("%s (pid %d) ignored SIGTERM; sending SIGKILL", info.name, pgid)
    if group_alive(pgid):
        raise RuntimeError(f"could not stop {info.name} (process group {pgid})")
    _reap(pgid)
    return True


def start_pubsub(
    state_dir: str | os.PathLike[str],
    host: str = DEFAULT_HOST,
    port: int | None = DEFAULT_PUBSUB_PORT,
    project: str = DEFAULT_PROJECT,
    timeout: float = DEFAULT_START_TIMEOUT,
) -> EmulatorInfo:
    """Starts the Pub/Sub emulator (``port=None``: a free port) and waits until healthy.

    Raises:
        EmulatorNotInstalledError: if the emulator or Java is missing.
        RuntimeError: if the port is busy or it does not become healthy in time.
    """
    port = free_port(host) if port is None else port
    command = pubsub_emulator_command(host, port)
    return _start(
        Path(state_dir),
        PUBSUB,
        command,
        host,
        {"port": port},
        lambda: pubsub_healthy(host, port, 1.0),
        project,
        timeout,
    )


def start_bigquery(
    state_dir: str | os.PathLike[str],
    host: str = DEFAULT_HOST,
    rest_port: int | None = DEFAULT_BQ_REST_PORT,
    grpc_port: int | None = DEFAULT_BQ_GRPC_PORT,
    project: str = DEFAULT_PROJECT,
    timeout: float = DEFAULT_START_TIMEOUT,
) -> EmulatorInfo:
    """Starts bqemulator (``None`` ports: free ports) and waits until healthy.

    Raises:
        EmulatorNotInstalledError: if bqemulator or DuckDB's spatial extension is missing.
        RuntimeError: if a port is busy or it does not become healthy in time.
    """
    ensure_duckdb_spatial()
    rest_port = free_port(host) if rest_port is None else rest_port
    grpc_port = free_port(host) if grpc_port is None else grpc_port
    if rest_port == grpc_port:
        raise ValueError(f"the BigQuery REST and gRPC ports must differ (both {rest_port})")
    command = bigquery_emulator_command(host, rest_port, grpc_port, project)
    return _start(
        Path(state_dir),
        BIGQUERY,
        command,
        host,
        {"rest": rest_port, "grpc": grpc_port},
        lambda: bigquery_healthy(host, rest_port, 1.0),
        project,
        timeout,
    )


def stop(state_dir: str | os.PathLike[str], name: str) -> bool:
    """Stops the emulator ``name`` recorded in ``state_dir`` and removes its state files.

    Returns:
        True if a running emulator was stopped.
    """
    info = read_info(state_dir, name)
    if info is None:
        _remove_state(Path(state_dir), name)
        return False
    stopped = stop_process(info)
    _remove_state(Path(state_dir), name)
    return stopped


def stop_all(state_dir: str | os.PathLike[str]) -> list[str]:
    """Stops both emulators recorded in ``state_dir``; returns the names stopped."""
    return [name for name in (PUBSUB, BIGQUERY) if stop(state_dir, name)]


def status(state_dir: str | os.PathLike[str]) -> dict[str, dict[str, object]]:
    """Per emulator: whether it is recorded, running and healthy, with pid and ports."""
    result: dict[str, dict[str, object]] = {}
    for name in (PUBSUB, BIGQUERY):
        info = read_info(state_dir, name)
        if info is None:
            result[name] = {"running": False, "healthy": False}
            continue
        running = _is_our_emulator(info)
        result[name] = {
            "running": running,
            "healthy": running and info.healthy(),
            "pid": info.pid,
            "host": info.host,
            "ports": info.ports,
            "log": info.log_path,
        }
    return result


# --------------------------------------------------------------------------- context managers


@contextlib.contextmanager
def _stopped_after(state_dir: str | os.PathLike[str], info: EmulatorInfo) -> Iterator[EmulatorInfo]:
    """Yields ``info``; then stops that emulator, unless it was already running (reused)."""
    try:
        yield info
    finally:
        if not info.reused:
            stop(state_dir, info.name)


@contextlib.contextmanager
def pubsub_emulator(
    state_dir: str | os.PathLike[str],
    host: str = DEFAULT_HOST,
    port: int | None = None,
    timeout: float = DEFAULT_START_TIMEOUT,
) -> Iterator[EmulatorInfo]:
    """Runs a Pub/Sub emulator for the duration of the block (``port=None``: a free port)."""
    with _stopped_after(state_dir, start_pubsub(state_dir, host, port, timeout=timeout)) as info:
        yield info


@contextlib.contextmanager
def bigquery_emulator(
    state_dir: str | os.PathLike[str],
    host: str = DEFAULT_HOST,
    rest_port: int | None = None,
    grpc_port: int | None = None,
    project: str = DEFAULT_PROJECT,
    timeout: float = DEFAULT_START_TIMEOUT,
) -> Iterator[EmulatorInfo]:
    """Runs bqemulator for the duration of the block (``None`` ports: free ports)."""
    info = start_bigquery(state_dir, host, rest_port, grpc_port, project, timeout)
    with _stopped_after(state_dir, info):
        yield info


@contextlib.contextmanager
def emulators(
    state_dir: str | os.PathLike[str],
    host: str = DEFAULT_HOST,
    pubsub_port: int | None = None,
    bq_rest_port: int | None = None,
    bq_grpc_port: int | None = None,
    project: str = DEFAULT_PROJECT,
) -> Iterator[LocalEmulators]:
    """Runs both emulators and writes fake credentials; ``.env`` has what clients need."""
    creds = ensure_fake_credentials(state_dir, project)
    with (
        pubsub_emulator(state_dir, host, pubsub_port) as ps,
        bigquery_emulator(state_dir, host, bq_rest_port, bq_grpc_port, project) as bq,
    ):
        yield LocalEmulators(pubsub=ps, bigquery=bq, credentials_path=creds, project=project)


# --------------------------------------------------------------------------- CLI


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m local.emulators", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("action", choices=["start", "stop", "status", "check"])
    parser.add_argument("--state-dir", default=".local/run", help="PID, log and credential files")
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--project", default=DEFAULT_PROJECT)
    parser.add_argument(
        "--pubsub-port", type=int, default=int(os.environ.get("PUBSUB_PORT", DEFAULT_PUBSUB_PORT))
    )
    parser.add_argument(
        "--bq-rest-port",
        type=int,
        default=int(os.environ.get("BQ_REST_PORT", DEFAULT_BQ_REST_PORT)),
    )
    parser.add_argument(
        "--bq-grpc-port",
        type=int,
        default=int(os.environ.get("BQ_GRPC_PORT", DEFAULT_BQ_GRPC_PORT)),
    )
    parser.add_argument(
        "--only",
        choices=["pubsub", "bigquery"],
        default=None,
        help="start/stop just one emulator (default: both)",
    )
    parser.add_argument("--timeout", type=float, default=DEFAULT_START_TIMEOUT)
    return parser.parse_args(argv)


def _print_exports(env: dict[str, str]) -> None:
    for key, value in env.items():
        print(f"export {key}={shlex.quote(value)}")


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; ``start`` prints ``export VAR=value`` lines on stdout."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = _parse_args(argv)
    state_dir = Path(args.state_dir)
    want_pubsub = args.only in (None, "pubsub")
    want_bq = args.only in (None, "bigquery")
    try:
        if args.action == "check":
            if want_pubsub:
                print(f"Pub/Sub emulator: {find_pubsub_emulator()}")
            if want_bq:
                ensure_duckdb_spatial()
                bigquery_emulator_command(DEFAULT_HOST, 0, 0, args.project)  # checks the import
                print(
                    f"BigQuery emulator: {sys.executable} local/bqemulator_main.py "
                    "(bqemulator; spatial extension ok)"
                )
            return 0
        if args.action == "start":
            creds = ensure_fake_credentials(state_dir, args.project)
            env = {CREDENTIALS_ENV_VAR: str(creds)}
            started: list[str] = []
            try:
                if want_pubsub:
                    ps = start_pubsub(
                        state_dir, args.host, args.pubsub_port, args.project, args.timeout
                    )
                    started.append(PUBSUB)
                    env.update(ps.env)
                if want_bq:
                    bq = start_bigquery(
                        state_dir,
                        args.host,
                        args.bq_rest_port,
                        args.bq_grpc_port,
                        args.project,
                        args.timeout,
                    )
                    env.update(bq.env)
            except BaseException:
                for name in started:  # do not leave half of the pair running
                    stop(state_dir, name)
                raise
            _print_exports(env)
            return 0
        if args.action == "stop":
            names = [n for n, w in ((PUBSUB, want_pubsub), (BIGQUERY, want_bq)) if w]
            for name in names:
                stop(state_dir, name)
            return 0
        report = status(state_dir)
        print(json.dumps(report, indent=2))
        wanted = [n for n, w in ((PUBSUB, want_pubsub), (BIGQUERY, want_bq)) if w]
        return 0 if all(report[n]["healthy"] for n in wanted) else 1
    except EmulatorNotInstalledError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 3
    except (RuntimeError, ValueError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
