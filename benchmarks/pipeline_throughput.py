"""Benchmark: live throughput of the full streaming pipeline on the local runner.

One measurement: fresh topic, subscription and BigQuery dataset on running
emulators; ``python -m local.pipeline`` (accelerated, or stock with
``LOCAL_ACCELERATE=0``) with inline inference and ``--retrain_topic``, and the
training launcher with its warm trainer consuming those triggers (as
``run_local.sh`` runs it; ``--no-trainer`` leaves it out); the
simulator publishes live readings (event time = now) at ``--rate`` for
``--duration`` seconds. An event counts as landed when it has BOTH its
training row and its prediction row, so the landed count is
``min(training rows, prediction rows)``. The rate is taken between the first
poll that saw a landed row and the moment everything landed (or the drain
allowance ran out): rows that landed before the first poll are not counted.
If the pipeline kept up with the offered rate, the figure is a lower bound of
its capacity (``kept_up``). Also: publish-to-prediction latency p50/p99 (from
the prediction rows, ``predicted_at - event_time``), the pipeline process's
peak RSS, and the 1-minute load average before and after (the machine may be
shared).

    python -m benchmarks.pipeline_throughput [--rate 200] [--duration 30] [--stock] [--no-trainer]

``python -m benchmarks.run`` repeats this (stock and accelerated, back to back)
and writes ``benchmarks/results.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "pipeline_throughput.jsonl"
PROJECT = "local-project"
CONFIG = "configs/traffic.yaml"


def load1() -> float:
    """The 1-minute load average (the machine is shared: say how busy it was)."""
    return round(os.getloadavg()[0], 2)


def _count(client, dataset: str, table: str) -> int:
    from google.api_core.exceptions import NotFound

    try:
        rows = client.query(f"SELECT COUNT(*) FROM `{dataset}.{table}`").result()
        return int(next(iter(rows))[0])
    except NotFound:
        return 0


def _latencies(client, dataset: str, table: str) -> dict:
    """p50/p99 seconds from an event's time (= publish time) to its prediction."""
    from dataset.times import to_datetime

    rows = client.query(f"SELECT event_time, predicted_at FROM `{dataset}.{table}`").result()
    lat = sorted(
        to_datetime(r["predicted_at"]).timestamp() - to_datetime(r["event_time"]).timestamp()
        for r in rows
    )
    if not lat:
        return {"latency_p50_s": None, "latency_p99_s": None}
    return {
        "latency_p50_s": round(lat[len(lat) // 2], 2),
        "latency_p99_s": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 2),
    }


def _peak_rss_mib(pid: int) -> float | None:
    """The process's peak RSS so far (VmHWM), MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def _published(stats_file: Path) -> int:
    try:
        return int(json.loads(stats_file.read_text()).get("events_published", 0))
    except (OSError, ValueError):
        return 0


def _retrains(stats_file: Path) -> dict | None:
    """The launcher's trigger and run counts (None if it wrote no stats)."""
    try:
        stats = json.loads(stats_file.read_text())
    except (OSError, ValueError):
        return None
    keys = ("triggers_received", "runs_started", "runs_succeeded", "runs_rejected", "runs_failed")
    return {key: stats.get(key) for key in keys}


def bootstrap_registry(state: Path, config: str = CONFIG) -> Path:
    """A registry holding a first model (trained on simulated history of ``config``)."""
    registry = state / "registry"
    subprocess.run(
        [sys.executable, "-m", "trainer.bootstrap", "--config", config,
         "--registry", str(registry), "--events", "5000", "--if-empty"],
        cwd=ROOT, check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    return registry


def measure(
    state: Path,
    registry: Path,
    *,
    accelerated: bool,
    rate: float,
    duration: float,
    drain: float,
    pull_size: int | None = None,
    patches: list[str] | None = None,
    startup_timeout: float = 180,
    trainer: bool = True,
) -> dict:
    """One live run of the full pipeline (emulators already running, env set).

    With ``trainer`` (the default) the training launcher runs too, as in
    ``run_local.sh`` (local backend, warm trainer), consuming the pipeline's
    retraining triggers: its retrains share the machine with the pipeline.
    """
    from dataset.config import load_config
    from dataset.resources import bigquery_client, ensure_pubsub

    config = load_config(CONFIG)
    run = f"b{uuid.uuid4().hex[:8]}"
    dataset, topic = f"bench_{run}", f"{run}-events"
    _, subscription = ensure_pubsub(PROJECT, topic, f"{topic}-sub")
    retrain_topic, retrain_subscription = ensure_pubsub(
        PROJECT, f"{run}-retrain", f"{run}-retrain-sub"
    )
    env = dict(os.environ, LOCAL_ACCELERATE="1" if accelerated else "0")
    if pull_size:
        env["LOCAL_PUBSUB_PULL_SIZE"] = str(pull_size)
    if patches is not None:
        env["LOCAL_ACCELERATE_PATCHES"] = ",".join(patches) or "none"
    run_dir = state / run
    run_dir.mkdir()
    log_path, stats_file = run_dir / "pipeline.log", run_dir / "publisher-stats.json"
    client = bigquery_client(PROJECT)
    load_before = load1()
    with open(log_path, "w") as log:
        pipeline = subprocess.Popen(
            [sys.executable, "-m", "local.pipeline", "--runner=DirectRunner", "--streaming",
             f"--project={PROJECT}", f"--dataset_config={CONFIG}",
             f"--input_subscription={subscription}", f"--bq_dataset={dataset}",
             f"--model_registry={registry}", "--model_poll_seconds=5",
             f"--retrain_topic={retrain_topic}"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    publisher = launcher = None
    launcher_stats = run_dir / "launcher-stats.json"
    if trainer:
        with open(run_dir / "launcher.log", "w") as launcher_log:
            launcher = subprocess.Popen(
                [sys.executable, "-m", "trainer.launcher", "--project", PROJECT,
                 "--config", CONFIG, "--subscription", retrain_subscription,
                 "--bq_dataset", dataset, "--registry", str(registry), "--backend", "local",
                 "--warm-trainer", "--state-dir", str(run_dir / "launcher"),
                 "--stats-file", str(launcher_stats)],
                cwd=ROOT, env=env, stdout=launcher_log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
    try:
        deadline = time.monotonic() + startup_timeout
        while "Starting " not in log_path.read_text(errors="replace"):
            if pipeline.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pipeline did not start; see {log_path}")
            time.sleep(0.5)
        time.sleep(3)  # the runner is up and polling before the first message
        with open(run_dir / "simulator.log", "w") as sim_log:
            publisher = subprocess.Popen(
                [sys.executable, "-m", "simulator.publish", "simulate", "--config", CONFIG,
                 "--topic", f"projects/{PROJECT}/topics/{topic}", "--rate", str(rate),
                 "--duration", str(duration), "--malformed-fraction", "0",
                 "--stats-file", str(stats_file)],
                cwd=ROOT, stdout=sim_log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        publish_start = time.monotonic()
        first = None  # (time, landed) at the first poll that saw a landed row
        last = (publish_start, 0)
        end_by = publish_start + duration + drain
        training = predictions = 0
        peak_rss = None
        while time.monotonic() < end_by:
            if pipeline.poll() is not None:
                raise RuntimeError(f"pipeline exited ({pipeline.returncode}); see {log_path}")
            training = _count(client, dataset, config.tables.training_examples)
            predictions = _count(client, dataset, config.tables.predictions)
            landed = min(training, predictions)
            now = time.monotonic()
            peak_rss = _peak_rss_mib(pipeline.pid) or peak_rss
            if landed and first is None:
                first = (now, landed)
            if landed > last[1]:
                last = (now, landed)
            done_publishing = publisher.poll() is not None
            published = _published(stats_file)
            if done_publishing and published and landed >= published:
                break
            time.sleep(1.0)
        publisher_rc = publisher.wait(timeout=60)
        published = _published(stats_file)
        latencies = _latencies(client, dataset, config.tables.predictions)
        retrains = _retrains(launcher_stats) if trainer else None
    finally:
        for proc in (publisher, launcher, pipeline):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
    landed = min(training, predictions)
    rate_landed = None
    if first is not None and last[0] > first[0]:
        rate_landed = (last[1] - first[1]) / (last[0] - first[0])
    return {
        "mode": "accelerated" if accelerated else "stock",
        "patches": patches,
        "offered_per_s": rate,
        "publish_seconds": duration,
        "published_valid": published,
        "publisher_exit_code": publisher_rc,
        "training_rows": training,
        "prediction_rows": predictions,
        "landed": landed,
        "all_landed": bool(published) and landed >= published,
        "startup_to_first_row_s": round(first[0] - publish_start, 1) if first else None,
        "events_per_s": round(rate_landed, 1) if rate_landed else None,
        "kept_up": bool(rate_landed) and rate_landed >= 0.95 * rate,
        **latencies,
        "pipeline_peak_rss_mib": peak_rss,
        "trainer_running": trainer,
        "retrains": retrains,
        "load1_before": load_before,
        "load1_after": load1(),
        "log": str(log_path),
    }


def median_of(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return round(statistics.median(values), 2) if values else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200, help="offered events/s (200)")
    parser.add_argument("--duration", type=float, default=30, help="publishing seconds (30)")
    parser.add_argument("--drain", type=float, default=40, help="seconds allowed after (40)")
    parser.add_argument("--stock", action="store_true", help="stock DirectRunner")
    parser.add_argument("--no-trainer", action="store_true", help="without the training launcher")
    args = parser.parse_args(argv)
    from local.emulators import emulators

    state = Path(tempfile.mkdtemp(prefix="bench-"))
    with emulators(state, project=PROJECT) as emus:
        os.environ.update(emus.env)
        registry = bootstrap_registry(state)
        result = measure(
            state, registry, accelerated=not args.stock, rate=args.rate,
            duration=args.duration, drain=args.drain, trainer=not args.no_trainer,
        )  # fmt: skip
    result["at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(result) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
