"""Benchmark: end-to-end throughput of the streaming pipeline on the local runner.

Publishes a backlog of N simulated traffic events to Pub/Sub up front, starts
the pipeline (DirectRunner, both emulators, with or without inline
inference), and measures how long it takes until every event has landed as a
training row in BigQuery. Results are appended to
``benchmarks/results/pipeline_throughput.jsonl``.

    python -m benchmarks.pipeline_throughput [--events 1500] [--with-model]

The legacy bundle-based DirectRunner pulls at most 10 messages per bundle;
this measures what that means for the whole graph on this machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "pipeline_throughput.jsonl"
PROJECT = "local-project"


def _publish_backlog(topic: str, n: int, seed: int) -> float:
    from google.cloud import pubsub_v1

    from simulator.traffic import TrafficSimulator

    now = time.time()
    sim = TrafficSimulator(seed=seed)
    readings = list(sim.readings(now - n / 50.0, now, rate=50.0))[:n]
    publisher = pubsub_v1.PublisherClient()
    path = publisher.topic_path(PROJECT, topic)
    start = time.perf_counter()
    futures = [
        publisher.publish(
            path,
            json.dumps(r).encode(),
            event_time=r["event_time"],
            message_id=f"bench-{i}",
        )
        for i, r in enumerate(readings)
    ]
    for f in futures:
        f.result(timeout=60)
    return time.perf_counter() - start


def _count(client, dataset: str, table: str) -> int:
    from google.api_core.exceptions import NotFound

    try:
        rows = client.query(f"SELECT COUNT(*) FROM `{dataset}.{table}`").result()
        return int(next(iter(rows))[0])
    except NotFound:
        return 0


def run(events: int, with_model: bool, timeout: float) -> dict:
    from dataset.resources import bigquery_client, ensure_pubsub
    from local.emulators import emulators

    state = Path(tempfile.mkdtemp(prefix="bench-"))
    with emulators(state) as emus:
        os.environ.update(emus.env)
        dataset, topic = "bench", "bench-events"
        _, subscription = ensure_pubsub(PROJECT, topic, f"{topic}-sub")
        publish_s = _publish_backlog(topic, events, seed=3)
        args = [
            sys.executable,
            "-m",
            "pipelines.main",
            "--runner=DirectRunner",
            f"--project={PROJECT}",
            "--dataset_config=configs/traffic.yaml",
            f"--input_subscription={subscription}",
            f"--bq_dataset={dataset}",
        ]
        if with_model:
            registry = state / "registry"
            subprocess.run(
                [sys.executable, "-m", "trainer.bootstrap", "--config", "configs/traffic.yaml",
                 "--registry", str(registry), "--events", "5000"],
                cwd=ROOT, check=True, capture_output=True,
            )  # fmt: skip
            args.append(f"--model_registry={registry}")
        client = bigquery_client(PROJECT)
        log = open(state / "pipeline.log", "w")  # noqa: SIM115
        start = time.perf_counter()
        proc = subprocess.Popen(
            args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        first_row_at = None
        landed = 0
        try:
            while time.perf_counter() - start < timeout:
                landed = _count(client, dataset, "training_examples")
                if landed and first_row_at is None:
                    first_row_at = time.perf_counter()
                    print(f"first rows after {first_row_at - start:.1f}s", file=sys.stderr)
                if landed >= events:
                    break
                if proc.poll() is not None:
                    raise RuntimeError(f"pipeline exited; see {state / 'pipeline.log'}")
                time.sleep(1)
            done_at = time.perf_counter()
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
            log.close()
    steady = None
    if first_row_at is not None and done_at > first_row_at:
        steady = landed / (done_at - first_row_at)
    return {
        "benchmark": "pipeline_throughput",
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, "
        f"Python {platform.python_version()}",
        "runner": "DirectRunner (legacy bundle-based, streaming)",
        "with_model": with_model,
        "events": events,
        "landed": landed,
        "publish_seconds": round(publish_s, 2),
        "startup_seconds": round(first_row_at - start, 1) if first_row_at else None,
        "total_seconds": round(done_at - start, 1),
        "events_per_second_steady": round(steady, 1) if steady else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1500)
    parser.add_argument("--with-model", action="store_true", help="inline inference on")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args(argv)
    result = run(args.events, args.with_model, args.timeout)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(result) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
