"""run_local.sh set-up and teardown (no pipeline): resources, clean exit, JSON last line.

The argument tests need no emulators: bad arguments fail before anything starts.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from local import emulators

REPO = Path(__file__).resolve().parents[2]


def _free_ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(emulators.free_port())
    return sorted(ports)


def _run(tmp_path: Path, ports: list[int], *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update(
        PUBSUB_PORT=str(ports[0]),
        BQ_REST_PORT=str(ports[1]),
        BQ_GRPC_PORT=str(ports[2]),
        RUN_LOCAL_STATE_DIR=str(tmp_path / "run"),
    )
    return subprocess.run(
        ["./run_local.sh", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _assert_nothing_left(state_dir: Path, ports: list[int]) -> None:
    assert not list(state_dir.glob("*.pid")), "PID files left behind"
    for port in ports:
        assert not emulators.port_in_use(port), f"port {port} still in use"


@pytest.fixture
def _pubsub_installed() -> None:
    try:
        emulators.find_pubsub_emulator()
    except emulators.EmulatorNotInstalledError as e:
        pytest.skip(str(e))


@pytest.mark.emulators
@pytest.mark.usefixtures("_pubsub_installed")
def test_setup_only_creates_resources_and_cleans_up(tmp_path):
    ports = _free_ports(3)
    result = _run(tmp_path, ports, "--setup-only")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "subscription: projects/local-project/subscriptions/traffic-pipeline" in result.stdout
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["run_status"] == "setup_only"
    assert summary["errors"] == []
    assert summary["failure"] is None
    assert {"aggregates", "training_examples", "dead_letter"} <= set(summary["tables"])
    # The first model is one run of the trainer, so its statuses are the only rows.
    assert {t: n for t, n in summary["tables"].items() if n} == {
        "training_runs": summary["tables"]["training_runs"]
    }
    assert summary["training_runs_by_status"] == {"succeeded": 1}
    state_dir = tmp_path / "run"
    assert (state_dir / "bigquery-emulator.log").is_file()
    _assert_nothing_left(state_dir, ports)


@pytest.mark.emulators
@pytest.mark.usefixtures("_pubsub_installed")
def test_busy_port_fails_clearly_and_still_prints_summary(tmp_path):
    ports = _free_ports(3)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", ports[1]))  # the BigQuery REST port
        busy.listen()
        result = _run(tmp_path, ports, "--setup-only")
    assert result.returncode == 1
    assert f"127.0.0.1:{ports[1]} (rest port) is already in use" in result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["run_status"] == "error"
    assert summary["failure"] == "emulators did not start"
    # the Pub/Sub emulator, started first, was stopped again
    _assert_nothing_left(tmp_path / "run", [ports[0], ports[2]])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--replay", "data/nope.jsonl"], "--replay: file data/nope.jsonl not found"),
        (["--replay", "README.md"], "must be JSON Lines (.jsonl/.ndjson/.json) or .csv"),
        (["--bootstrap-rows", "100"], "--bootstrap-rows needs --replay FILE"),
        (
            ["--replay", "data/ad_conversions_sample.jsonl", "--bootstrap-rows", "0"],
            "--bootstrap-rows must be a positive whole number",
        ),
        (
            ["--replay", "data/ad_conversions_sample.jsonl", "--bootstrap-rows", "ten"],
            "--bootstrap-rows must be a positive whole number",
        ),
        (
            ["--replay", "data/ad_conversions_sample.jsonl", "--drift-after", "30"],
            "--drift-after is the simulator's",
        ),
    ],
)
def test_replay_arguments_fail_fast(tmp_path, args, message):
    """Checked before anything starts: exit 2, the reason on stderr, no state dir."""
    result = _run(tmp_path, _free_ports(3), "--config", "configs/ad_conversions.yaml", *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_config_the_simulator_cannot_produce_needs_replay(tmp_path):
    """No traffic simulator for another stream: a clear error before the emulators start."""
    result = _run(
        tmp_path, _free_ports(3), "--config", "configs/ad_conversions.yaml", "--duration", "5"
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "the traffic simulator cannot produce records for configs/ad_conversions.yaml" in (
        result.stdout
    )
    assert "--replay FILE" in result.stdout
    assert "starting emulators" not in result.stdout
    assert json.loads(result.stdout.strip().splitlines()[-1])["exit_code"] == 2
