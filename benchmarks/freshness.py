"""Benchmark: freshness, from the N-th new label to the first prediction by the model trained on it.

N is the config's ``retraining.min_new_examples``: the label that makes the
count trigger fire. On running emulators, one measurement starts the
accelerated pipeline (``python -m local.pipeline``, inline inference,
``--retrain_topic``) and the launcher (``--backend local``) over a registry
that already holds a first model, then publishes live labeled readings at a
fixed ``--rate`` (no malformed, late or duplicated ones) until ``--retrains``
promoted versions have each scored a prediction. For each retrain it lays
the times recorded by the code itself side by side:

==========================  ======================================================
``t_label``                 publish time of the N-th new labeled event (the
                            publisher's own clock: the ``(total - new + N)``-th
                            event published, from the trigger row's counts)
``ingest``                  ... until the training row's ``ingested_at``
``count_and_trigger``       ... until the ``retrain_triggers`` row's ``created_at``
                            (count panes; the debounce, if it held the trigger)
``trigger_delivery``        ... until the launcher pulled the trigger (the trainer's
                            ``launch`` phase starts there: BigQuery row, Pub/Sub,
                            the launcher's poll)
``launch``                  ... until the trainer's process started (queued and
                            submitting rows, ``Popen``); a warm worker: until it
                            got the job
trainer phases              ``interpreter, import, setup, claim, read, validate,
                            train, evaluate, publish, gates, promote``
                            (``trainer.timing``; gaps between them in
                            ``trainer_other``)
``pickup``                  promotion until the first prediction row whose
                            ``model_version`` is the new version
                            (``--model_poll_seconds``, the model load, the next
                            batch)
==========================  ======================================================

``freshness_s`` is the sum: first prediction by the new version minus
``t_label``. The figure reported is the median over the retrains of one run.
Only ``new_data`` triggers are timed: one fired by ``quality`` or ``schedule``
has no N-th label (it fires before N). Two details sit inside the segments:
``debounce_hold_s`` (``count_and_trigger``) and ``previous_run_busy_s``
(``trigger_delivery``: the launcher's one slot was still taken).

    python -m benchmarks.freshness [--retrains 3] [--rate 16] [--model-poll-seconds 5]
        [--modes warm,cold] [--config configs/traffic.yaml]

Writes ``benchmarks/results/freshness.json``: ``freshness_s`` and ``breakdown``
of the first mode (warm: the launcher's ``--warm-trainer``), each mode's
``freshness_s_<mode>``, and every run under ``runs``. ``measure(...)``
(emulators already running and their environment set) returns one mode's
dict with ``freshness_s`` and ``breakdown``, for ``benchmarks.run``.

The rate: at ``rate >= min_new_examples / min_interval_seconds`` the count is
reached before the debounce allows a trigger, and the wait shows up in
``count_and_trigger``; the default 16/s (traffic: 1,000 examples in 62.5 s,
debounce 60 s) keeps the debounce out of it.
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
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.pipeline_throughput import PROJECT, ROOT, bootstrap_registry, load1

RESULTS = ROOT / "benchmarks" / "results" / "freshness.json"
DEFAULT_CONFIG = "configs/traffic.yaml"
TRAINER_PHASES = (
    "interpreter",
    "import",
    "setup",
    "claim",
    "read",
    "validate",
    "train",
    "evaluate",
    "publish",
    "gates",
    "promote",
)
SEGMENTS = (
    "ingest",
    "count_and_trigger",
    "trigger_delivery",
    "launch",
    *TRAINER_PHASES,
    "trainer_other",
    "pickup",
)


class RecordingSink:
    """A simulator sink that notes each message's id and publish time (epoch s), in order."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.sent: list[tuple[str, float]] = []
        self._lock = threading.Lock()

    def publish(self, msg) -> None:
        at = time.time()
        self.inner.publish(msg)
        with self._lock:
            self.sent.append((msg.message_id, at))

    def poll(self) -> None:
        self.inner.poll()

    def flush(self, timeout: float) -> None:
        self.inner.flush(timeout)

    def nth(self, n: int) -> tuple[str, float] | None:
        """The ``n``-th message published (1-based), or None if not yet."""
        with self._lock:
            return self.sent[n - 1] if 0 < n <= len(self.sent) else None


def _epoch(value: Any) -> float | None:
    """A BigQuery TIMESTAMP (datetime) or RFC 3339 string, as epoch seconds."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.timestamp()
    from dataset.times import to_datetime

    return to_datetime(value).timestamp()


def _query(client, sql: str) -> list[dict]:
    from google.api_core.exceptions import NotFound

    try:
        return [dict(r) for r in client.query(sql).result()]
    except NotFound:
        return []


def _stop(proc: subprocess.Popen | None, timeout: float = 30.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def breakdown(
    t_label: float,
    ingested_at: float | None,
    trigger_created: float,
    phases: list[dict],
    first_prediction: float,
) -> dict[str, float]:
    """Consecutive segments from ``t_label`` to ``first_prediction`` (they sum to freshness).

    ``phases`` is the trainer's timeline (``trainer.timing``): ``launch``
    starts when the launcher pulled the trigger and ends at the trainer's
    origin; the trainer phases follow; ``pickup`` runs from the end of the
    last phase (``promote``) to the first prediction.
    """
    by_name = {p["name"]: p for p in phases}
    received = by_name["launch"]["start"] if "launch" in by_name else None
    origin = by_name["launch"]["end"] if "launch" in by_name else phases[0]["start"]
    ingested = ingested_at if ingested_at is not None else t_label
    out = {
        "ingest": ingested - t_label,
        "count_and_trigger": trigger_created - ingested,
        "trigger_delivery": (received if received is not None else origin) - trigger_created,
        "launch": origin - received if received is not None else 0.0,
    }
    for name in TRAINER_PHASES:
        out[name] = by_name[name]["seconds"] if name in by_name else 0.0
    trainer_end = phases[-1]["end"]
    out["trainer_other"] = (trainer_end - origin) - sum(out[n] for n in TRAINER_PHASES)
    out["pickup"] = first_prediction - trainer_end
    return {k: round(v, 3) for k, v in out.items()}


def _retrain_rows(client, dataset: str, config) -> tuple[list[dict], dict[str, dict]]:
    t = config.tables
    triggers = _query(
        client,
        f"SELECT trigger_id, reason, new_examples, total_examples, created_at, event_time_end "
        f"FROM `{dataset}.{t.retrain_triggers}` ORDER BY created_at",
    )
    terminal = _query(
        client,
        f"SELECT trigger_id, status, model_version, metrics, promoted "
        f"FROM `{dataset}.{t.training_runs}` "
        f"WHERE status IN ('succeeded', 'rejected', 'failed')",
    )
    return triggers, {r["trigger_id"]: r for r in terminal}


def _first_prediction(client, dataset: str, config, version: str) -> float | None:
    rows = _query(
        client,
        f"SELECT MIN(predicted_at) AS first FROM `{dataset}.{config.tables.predictions}` "
        f"WHERE model_version = '{version}'",
    )
    return _epoch(rows[0]["first"]) if rows else None


def _ingested_at(client, dataset: str, config, example_id: str) -> float | None:
    rows = _query(
        client,
        f"SELECT MIN(ingested_at) AS at FROM `{dataset}.{config.tables.training_examples}` "
        f"WHERE example_id = '{example_id}'",
    )
    return _epoch(rows[0]["at"]) if rows else None


def _phases_of(run: dict | None) -> list[dict]:
    if not run or not run.get("metrics"):
        return []
    return (json.loads(run["metrics"]).get("phases") or {}).get("phases") or []


def _one_retrain(
    client, dataset, config, sink: RecordingSink, trigger, run, registry_events, previous=None
):
    """The timeline of one retrain whose version scored a prediction; None if not yet.

    ``previous``: the trigger row and run row before this one, for two details
    that are inside the segments: ``debounce_hold_s`` (in ``count_and_trigger``:
    how long ``min_interval_seconds`` after the previous trigger's newest example
    outlasted the N-th label) and ``previous_run_busy_s`` (in
    ``trigger_delivery``: the previous run still held the launcher's one slot).
    """
    n = config.retraining.min_new_examples
    if run is None or run["status"] != "succeeded" or not run.get("model_version"):
        return None
    version = run["model_version"]
    first = _first_prediction(client, dataset, config, version)
    if first is None:
        return None
    index = int(trigger["total_examples"]) - int(trigger["new_examples"]) + n
    nth = sink.nth(index)
    if nth is None:
        raise RuntimeError(f"the publisher has no {index}-th message")
    example_id, t_label = nth
    metrics = json.loads(run["metrics"] or "{}")
    phases = (metrics.get("phases") or {}).get("phases") or []
    if not phases:
        raise RuntimeError(f"run of {trigger['trigger_id']} recorded no phases")
    created = _epoch(trigger["created_at"])
    ingested = _ingested_at(client, dataset, config, example_id)
    parts = breakdown(t_label, ingested, created, phases, first)
    promoted_at = registry_events.get(version)
    hold = busy = 0.0
    if previous is not None:
        prev_trigger, prev_run = previous
        prev_end = _epoch(prev_trigger.get("event_time_end"))
        if prev_end is not None:
            hold = max(0.0, prev_end + config.retraining.min_interval_seconds - t_label)
        prev_phases = _phases_of(prev_run)
        if prev_phases:
            busy = max(0.0, prev_phases[-1]["end"] - created)
    return {
        "trigger_id": trigger["trigger_id"],
        "reason": trigger["reason"],
        "new_examples": int(trigger["new_examples"]),
        "nth_label_index": index,
        "nth_label_id": example_id,
        "model_version": version,
        "freshness_s": round(first - t_label, 3),
        "breakdown": parts,
        "debounce_hold_s": round(hold, 3),
        "previous_run_busy_s": round(busy, 3),
        "label_to_promotion_s": round(promoted_at - t_label, 3) if promoted_at else None,
        "trainer_total_s": metrics.get("timings_s", {}).get("total_s"),
        "epochs": metrics.get("epochs"),
    }


def _promotions(registry: Path) -> dict[str, float]:
    from model.registry import ModelRegistry

    out = {}
    for event in ModelRegistry(str(registry)).history():
        if event.get("action") == "promote" and event.get("version"):
            out.setdefault(event["version"], _epoch(event["at"]))
    return out


def measure(
    state: Path,
    registry: Path,
    *,
    config_path: str = DEFAULT_CONFIG,
    retrains: int = 3,
    rate: float = 16.0,
    model_poll_seconds: float = 5.0,
    launcher_poll_seconds: float = 2.0,
    warm_trainer: bool = False,
    timeout: float = 900.0,
    startup_timeout: float = 240.0,
) -> dict[str, Any]:
    """One run: pipeline + launcher + publisher until ``retrains`` new versions predicted.

    The emulators must be running with their environment set (``local.emulators``),
    and ``registry`` must hold a current model (``bootstrap_registry``).

    Returns:
        ``freshness_s`` (median over the retrains), ``breakdown`` (median of each
        segment), ``retrains`` (each one's timeline) and the settings and load.
    """
    from dataset.config import load_config
    from dataset.resources import bigquery_client, ensure_bigquery_tables, ensure_pubsub
    from simulator.publisher import run_simulate
    from simulator.pubsub import connect

    config = load_config(config_path)
    run = f"f{uuid.uuid4().hex[:8]}"
    dataset, topic = f"fresh_{run}", f"{run}-events"
    _, subscription = ensure_pubsub(PROJECT, topic, f"{topic}-sub")
    retrain_topic, launcher_sub = ensure_pubsub(PROJECT, f"{run}-retrain", f"{run}-launcher")
    client = bigquery_client(PROJECT)
    ensure_bigquery_tables(PROJECT, dataset, config, client=client)
    run_dir = state / run
    run_dir.mkdir(parents=True)
    pipeline_log, launcher_log = run_dir / "pipeline.log", run_dir / "launcher.log"
    env = dict(os.environ, LOCAL_ACCELERATE="1")
    load_before = load1()
    procs: list[subprocess.Popen] = []
    with open(pipeline_log, "w") as log:
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "local.pipeline",
                    "--runner=DirectRunner",
                    "--streaming",
                    f"--project={PROJECT}",
                    f"--dataset_config={config_path}",
                    f"--input_subscription={subscription}",
                    f"--bq_dataset={dataset}",
                    f"--model_registry={registry}",
                    f"--model_poll_seconds={model_poll_seconds:g}",
                    f"--retrain_topic={retrain_topic}",
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        )
    launcher_cmd = [
        sys.executable, "-m", "trainer.launcher", "--project", PROJECT, "--config", config_path,
        "--subscription", launcher_sub, "--bq_dataset", dataset, "--registry", str(registry),
        "--backend", "local", "--no-monitor", "--poll-seconds", f"{launcher_poll_seconds:g}",
        "--state-dir", str(run_dir / "launcher"), "--grace-seconds", "5",
    ]  # fmt: skip
    if warm_trainer:
        launcher_cmd.append("--warm-trainer")
    with open(launcher_log, "w") as log:
        procs.append(
            subprocess.Popen(
                launcher_cmd,
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        )
    pipeline = procs[0]
    stop = threading.Event()
    devnull = open(os.devnull, "w")  # noqa: SIM115 - the publisher's progress lines
    sink = None
    publisher = None
    done: dict[str, dict] = {}
    try:
        deadline = time.monotonic() + startup_timeout
        while "Starting " not in pipeline_log.read_text(errors="replace"):
            if pipeline.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pipeline did not start; see {pipeline_log}")
            time.sleep(0.5)
        time.sleep(3)  # the runner is up and polling before the first message
        sink = RecordingSink(connect(f"projects/{PROJECT}/topics/{topic}"))
        publisher = threading.Thread(
            target=run_simulate,
            args=(config, f"projects/{PROJECT}/topics/{topic}", rate, None),
            kwargs={"sink": sink, "stop": stop, "progress_stream": devnull},
            daemon=True,
        )
        publisher.start()
        end_by = time.monotonic() + timeout
        finished_runs = 0
        while len(done) < retrains and time.monotonic() < end_by:
            for proc, log in zip(procs, (pipeline_log, launcher_log), strict=True):
                if proc.poll() is not None:
                    raise RuntimeError(f"{log.stem} exited ({proc.returncode}); see {log}")
            if not publisher.is_alive():
                raise RuntimeError("the publisher stopped")
            triggers, runs_by_trigger = _retrain_rows(client, dataset, config)
            finished_runs = len(runs_by_trigger)
            promotions = _promotions(registry)
            for i, trigger in enumerate(triggers):
                if trigger["trigger_id"] in done:
                    continue
                if trigger["reason"] != "new_data":
                    continue  # fired by the schedule or quality: no N-th label to time from
                previous = None
                if i:
                    before = triggers[i - 1]
                    previous = (before, runs_by_trigger.get(before["trigger_id"]))
                timeline = _one_retrain(
                    client, dataset, config, sink, trigger,
                    runs_by_trigger.get(trigger["trigger_id"]), promotions, previous,
                )  # fmt: skip
                if timeline is not None:
                    done[trigger["trigger_id"]] = timeline
                    print(f"[freshness] {json.dumps(timeline)}", file=sys.stderr, flush=True)
            time.sleep(1.0)
        triggers, runs_by_trigger = _retrain_rows(client, dataset, config)
    finally:
        stop.set()
        if publisher is not None:
            publisher.join(timeout=30)
        if sink is not None:
            sink.inner.close()
        for proc in reversed(procs):
            _stop(proc)
        devnull.close()
    timelines = list(done.values())
    statuses = [r["status"] for r in runs_by_trigger.values()]
    return {
        "freshness_s": _median([t["freshness_s"] for t in timelines]),
        "breakdown": {s: _median([t["breakdown"][s] for t in timelines]) for s in SEGMENTS},
        "retrains_measured": len(timelines),
        "triggers_by_reason": {
            r: [t["reason"] for t in triggers].count(r)
            for r in sorted({t["reason"] for t in triggers})
        },
        "retrains_wanted": retrains,
        "triggers": len(triggers),
        "runs_finished": finished_runs,
        "runs_by_status": {s: statuses.count(s) for s in sorted(set(statuses))},
        "retrains": timelines,
        "settings": {
            "config": config_path,
            "min_new_examples": config.retraining.min_new_examples,
            "min_interval_seconds": config.retraining.min_interval_seconds,
            "training_window_rows": config.retraining.training_window_rows,
            "rate_per_s": rate,
            "model_poll_seconds": model_poll_seconds,
            "launcher_poll_seconds": launcher_poll_seconds,
            "warm_trainer": warm_trainer,
            "launcher_monitor": False,
        },
        "load1_before": load_before,
        "load1_after": load1(),
        "logs": str(run_dir),
    }


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--retrains", type=int, default=3, help="retrains to time (3)")
    parser.add_argument("--rate", type=float, default=16.0, help="labeled events/s (16)")
    parser.add_argument("--model-poll-seconds", type=float, default=5.0, help="pipeline's (5)")
    parser.add_argument("--launcher-poll-seconds", type=float, default=2.0, help="(2)")
    parser.add_argument(
        "--modes",
        default="warm,cold",
        help="trainer start-up modes to measure, in order, comma-separated: warm (launcher "
        "--warm-trainer), cold (a new process per run); the first one is the headline (warm,cold)",
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed (900)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.retrains < 1 or args.rate <= 0:
        parser.error("--retrains must be >= 1 and --rate positive")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or set(modes) - {"warm", "cold"} or len(set(modes)) != len(modes):
        parser.error(f"--modes takes warm and/or cold, got {args.modes!r}")
    from local.emulators import emulators

    state = Path(tempfile.mkdtemp(prefix="bench-fresh-"))
    with emulators(state, project=PROJECT) as emus:
        os.environ.update(emus.env)
        registry = bootstrap_registry(state)
        by_mode = {}
        for mode in modes:
            print(f"[freshness] measuring {mode}", file=sys.stderr, flush=True)
            by_mode[mode] = measure(
                state, registry, config_path=args.config, retrains=args.retrains,
                rate=args.rate, model_poll_seconds=args.model_poll_seconds,
                launcher_poll_seconds=args.launcher_poll_seconds, warm_trainer=mode == "warm",
                timeout=args.timeout,
            )  # fmt: skip
    headline = by_mode[modes[0]]
    result = {
        "freshness_s": headline["freshness_s"],
        "breakdown": headline["breakdown"],
        "mode": modes[0],
        **{f"freshness_s_{m}": r["freshness_s"] for m, r in by_mode.items()},
        "runs": by_mode,
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
