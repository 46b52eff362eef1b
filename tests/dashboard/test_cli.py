"""``python -m dashboard.app`` as run_local.sh starts it: serves the page on localhost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from dashboard.app import main
from tests.trainer.control_helpers import CONFIG_PATH, REPO


def test_cli_refuses_a_topic_that_is_not_a_path(capsys):
    argv = ["--project", "p", "--bq_dataset", "d", "--config", CONFIG_PATH, "--registry", "r"]
    assert main([*argv, "--retrain_topic", "retrain"]) == 2
    assert "--retrain_topic" in capsys.readouterr().err


@pytest.mark.emulators
def test_cli_serves_the_page_on_localhost(world, gcp_project, tmp_path):
    from tests.dashboard.test_browser import _free_port

    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dashboard.app",
            "--project",
            gcp_project,
            "--bq_dataset",
            world.dataset,
            "--config",
            CONFIG_PATH,
            "--registry",
            str(tmp_path / "empty-registry"),
            "--retrain_topic",
            world.topic,
            "--port",
            str(port),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
                    page = r.read().decode()
                break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "dashboard did not answer"
                time.sleep(0.2)
        assert "Retrain now" in page and "training_examples" in page
        assert "could not read" not in page  # every table was readable
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/state", timeout=10) as r:
            state = json.loads(r.read())
        assert state["errors"] == {} and state["counts"]["training_runs"] == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
