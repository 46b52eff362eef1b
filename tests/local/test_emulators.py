"""Emulator process management: health checks, errors, and clean shutdown."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from local import emulators

REPO = Path(__file__).resolve().parents[2]


def _listening_socket() -> tuple[socket.socket, int]:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s, s.getsockname()[1]


def _assert_gone(pids: list[int], ports: list[int]) -> None:
    for pid in pids:
        assert not emulators.group_alive(pid), f"process group {pid} still running"
    for port in ports:
        assert not emulators.port_in_use(port), f"port {port} still in use"


def test_port_in_use_and_free_port():
    s, port = _listening_socket()
    try:
        assert emulators.port_in_use(port)
    finally:
        s.close()
    assert not emulators.port_in_use(emulators.free_port())


def test_health_checks_fail_on_closed_port():
    port = emulators.free_port()
    assert not emulators.pubsub_healthy("127.0.0.1", port, 0.5)
    assert not emulators.bigquery_healthy("127.0.0.1", port, 0.5)
    env = {"PUBSUB_EMULATOR_HOST": f"127.0.0.1:{port}", "BIGQUERY_EMULATOR_HOST": "http://x:1"}
    assert emulators.healthy_from_env(env) == {
        emulators.PUBSUB: False,
        emulators.BIGQUERY: False,
    }


def test_busy_port_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(emulators, "pubsub_emulator_command", lambda h, p: ["sleep", "30"])
    s, port = _listening_socket()
    try:
        with pytest.raises(RuntimeError, match=f"127.0.0.1:{port}.*already in use"):
            emulators.start_pubsub(tmp_path, port=port)
    finally:
        s.close()
    assert not (tmp_path / f"{emulators.PUBSUB}.pid").exists()


def test_crash_at_start_names_the_log(tmp_path, monkeypatch):
    monkeypatch.setattr(
        emulators, "pubsub_emulator_command", lambda h, p: ["sh", "-c", "echo boom-123; exit 3"]
    )
    with pytest.raises(RuntimeError, match="exited with code 3") as err:
        emulators.start_pubsub(tmp_path, port=None, timeout=10)
    assert str(tmp_path / "pubsub-emulator.log") in str(err.value)
    assert "boom-123" in str(err.value)
    assert not (tmp_path / f"{emulators.PUBSUB}.pid").exists()


def test_unhealthy_start_times_out_and_kills_the_process(tmp_path, monkeypatch):
    marker = tmp_path / "child.pid"
    command = ["sh", "-c", f"echo $$ > {marker}; exec sleep 60"]
    monkeypatch.setattr(emulators, "pubsub_emulator_command", lambda h, p: command)
    with pytest.raises(RuntimeError, match="not healthy after 1 s.*pubsub-emulator.log"):
        emulators.start_pubsub(tmp_path, port=None, timeout=1)
    pid = int(marker.read_text())
    assert not emulators.pid_alive(pid)
    assert not emulators.group_alive(pid)


def test_stale_pid_file_does_not_signal_other_processes(tmp_path):
    # A record whose PID now belongs to an unrelated process (this test process).
    info = emulators.EmulatorInfo(
        name=emulators.PUBSUB,
        pid=os.getpid(),
        host="127.0.0.1",
        ports={"port": 1},
        log_path=str(tmp_path / "x.log"),
        command=["x"],
    )
    (tmp_path / f"{emulators.PUBSUB}.json").write_text(json.dumps(info.__dict__))
    assert emulators.status(tmp_path)[emulators.PUBSUB]["running"] is False
    assert emulators.stop(tmp_path, emulators.PUBSUB) is False
    assert not (tmp_path / f"{emulators.PUBSUB}.json").exists()


@pytest.mark.emulators
def test_context_manager_starts_and_stops_both(tmp_path, fake_credentials):
    try:
        emulators.find_pubsub_emulator()
    except emulators.EmulatorNotInstalledError as e:
        pytest.skip(str(e))
    with emulators.emulators(tmp_path) as emu:
        assert emu.pubsub is not None and emu.bigquery is not None
        assert emu.pubsub.healthy() and emu.bigquery.healthy()
        env = emu.env
        assert env["BIGQUERY_EMULATOR_HOST"].startswith("http://127.0.0.1:")
        assert env["PUBSUB_EMULATOR_HOST"].startswith("127.0.0.1:")
        assert Path(env["GOOGLE_APPLICATION_CREDENTIALS"]).is_file()
        assert emulators.status(tmp_path)[emulators.BIGQUERY]["healthy"] is True
        pids = [emu.pubsub.pid, emu.bigquery.pid]
        ports = [emu.pubsub.port, emu.bigquery.ports["rest"], emu.bigquery.ports["grpc"]]
        assert all(emulators.group_alive(pid) for pid in pids)
    _assert_gone(pids, ports)
    assert not list(tmp_path.glob("*.pid"))
    assert (tmp_path / "bigquery-emulator.log").is_file()


@pytest.mark.emulators
def test_cli_start_status_stop_leaves_nothing_behind(tmp_path):
    try:
        emulators.find_pubsub_emulator()
    except emulators.EmulatorNotInstalledError as e:
        pytest.skip(str(e))
    ports = [emulators.free_port() for _ in range(3)]
    while len(set(ports)) < 3:
        ports = [emulators.free_port() for _ in range(3)]
    base = [sys.executable, "-m", "local.emulators"]
    flags = ["--state-dir", str(tmp_path), "--pubsub-port", str(ports[0])]
    flags += ["--bq-rest-port", str(ports[1]), "--bq-grpc-port", str(ports[2])]

    def run(action: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*base, action, *flags], cwd=REPO, capture_output=True, text=True, timeout=180
        )

    try:
        started = run("start")
        assert started.returncode == 0, started.stderr
        exports = dict(
            line.removeprefix("export ").split("=", 1) for line in started.stdout.splitlines()
        )
        assert exports["PUBSUB_EMULATOR_HOST"] == f"127.0.0.1:{ports[0]}"
        assert exports["BIGQUERY_EMULATOR_HOST"] == f"http://127.0.0.1:{ports[1]}"
        assert exports["BIGQUERY_EMULATOR_GRPC_HOST"] == f"127.0.0.1:{ports[2]}"
        pids = [int(p.read_text()) for p in sorted(tmp_path.glob("*.pid"))]
        assert len(pids) == 2
        assert run("status").returncode == 0
        again = run("start")  # idempotent: reuses the running pair
        assert again.returncode == 0, again.stderr
        assert sorted(int(p.read_text()) for p in tmp_path.glob("*.pid")) == sorted(pids)
    finally:
        stopped = run("stop")
    assert stopped.returncode == 0, stopped.stderr
    _assert_gone(pids, ports)
    assert run("status").returncode == 1
