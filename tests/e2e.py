"""Helpers for end-to-end tests: run the real pipeline against the emulators."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def running_pipeline(
    project: str, config: str, subscription: str, dataset: str, log_path: Path, *extra: str
) -> Iterator[subprocess.Popen]:
    """Runs ``python -m pipelines.main`` on the DirectRunner until the block ends."""
    cmd = [
        sys.executable,
        "-m",
        "pipelines.main",
        "--runner=DirectRunner",
        f"--project={project}",
        f"--dataset_config={config}",
        f"--input_subscription={subscription}",
        f"--bq_dataset={dataset}",
        *extra,
    ]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=dict(os.environ),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def wait_until(
    condition: Callable[[], bool], timeout: float, proc: subprocess.Popen, log_path: Path
) -> None:
    """Polls ``condition`` every 2 s; fails with the pipeline log if it never holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"pipeline exited ({proc.returncode}):\n{tail(log_path)}")
        if condition():
            return
        time.sleep(2)
    raise AssertionError(f"condition not met within {timeout} s; pipeline log:\n{tail(log_path)}")


def wait_for_start(proc: subprocess.Popen, log_path: Path, timeout: float = 120) -> None:
    """Waits until ``pipelines.main`` has created its tables and is starting the runner.

    Event-time deadlines in a test should be taken after this: the local runner's
    watermark follows the wall clock, so start-up time would otherwise count
    against them.
    """
    wait_until(lambda: "Starting " in log_path.read_text(errors="replace"), timeout, proc, log_path)


def tail(path: Path, lines: int = 40) -> str:
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(line for line in text if "WARNING" not in line[:40])[-6000:] or "\n".join(
        text[-lines:]
    )


def count(client, dataset: str, table: str, where: str = "TRUE") -> int:
    """Rows in ``dataset.table`` matching ``where``; 0 while the table does not exist."""
    from google.api_core.exceptions import NotFound

    query = f"SELECT COUNT(*) AS n FROM `{dataset}.{table}` WHERE {where}"
    try:
        return int(next(iter(client.query(query).result()))[0])
    except NotFound:
        return 0


def publish(project: str, topic: str, messages: list[tuple[bytes | dict, dict]]) -> None:
    """Publishes (payload, attributes) pairs and waits for every ack."""
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    path = publisher.topic_path(project, topic)
    futures = [
        publisher.publish(
            path, data if isinstance(data, bytes) else json.dumps(data).encode(), **attributes
        )
        for data, attributes in messages
    ]
    for future in futures:
        future.result(timeout=30)
