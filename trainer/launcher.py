"""The training launcher: turns retrain triggers into training runs (the service loop).

A long-running service next to the streaming pipeline::

    python -m trainer.launcher --project P --config configs/traffic.yaml \\
        --subscription projects/P/subscriptions/retrain-launcher --bq_dataset D \\
        --registry .local/registry [--backend local|vertex] [--max-concurrent 1] \\
        [--warm-trainer] \\
        [--poll-seconds 2] [--monitor-seconds 15] [--grace-seconds 120] \\
        [--lookback-days 30] [--duration SECONDS] [--state-dir DIR] [--stats-file PATH]

    # Vertex AI (the trainer runs as a CustomJob from this repo's sdist):
    ... --backend vertex --registry gs://BUCKET/registry --vertex-region europe-west4 \\
        --vertex-staging-bucket gs://BUCKET/staging \\
        --vertex-container-uri REGION-docker.pkg.dev/vertex-ai/training/IMAGE:TAG \\
        [--vertex-machine-type n1-standard-4] [--vertex-service-account SA] \\
        [--vertex-package-uri gs://.../pkg.tar.gz] [--vertex-config-uri gs://.../c.yaml]

The parts live in their own modules: trigger parsing in
``trainer.trigger_messages``, run-status rows and queries in ``trainer.runs``,
the backends in ``trainer.backends.local`` and ``trainer.backends.vertex``,
run ownership in ``trainer.claims``, the rollback monitor in
``trainer.rollback_monitor`` (run here unless ``--no-monitor``; it can also run
as its own process).

Loop (every ``--poll-seconds``):

1. **Reap** finished jobs: a job that ended is matched with its latest
   ``training_runs`` row; the trainer records ``succeeded``/``rejected``/``failed``
   itself, and if it died (non-zero exit, Vertex job failed) without doing so the
   launcher records ``failed`` with the exit code and the tail of its log. A
   job whose trainer refused the run (another trainer owns it) is not a
   failure: the launcher re-attaches to the owner if it is a local process,
   otherwise leaves the run to it.
2. **Start** recovered runs (see crash safety) while a slot is free.
3. **Pull** trigger messages synchronously (``SubscriberClient.pull`` with a
   bounded timeout, at most as many as there are free slots). For each:
   parse and validate (malformed: log, ack, count); **idempotency**: if
   ``training_runs`` already has a row for the ``trigger_id``, ack and count a
   duplicate; otherwise record a ``queued`` row (run id ``run-<trigger_id>``),
   *then* ack, *then* start it.
4. **Monitor** (every ``--monitor-seconds``): ``trainer.rollback_monitor``.
5. Rewrite the **stats file** (JSON) and, every 30 s, log a progress line.

Starting a run: record ``submitting`` in ``training_runs`` and write an
in-flight record (``<state dir>/inflight/<run_id>.json``, with a fresh
``attempt_id``) *before* the backend submits the job; then add the job's
handle (pid or Vertex job name) to the record. The trainer gets the
``attempt_id`` and claims the run (``trainer.claims``) before it does anything.

Debounce: at most ``--max-concurrent`` jobs run at once. While every slot is
taken the launcher does **not pull**: triggers that arrive meanwhile wait,
unacknowledged, in the Pub/Sub subscription, and are pulled and started one by
one when slots free up. (Coalescing a backlog into one run would be a policy
change: each trigger gets its own run.)

Crash safety: a crash

* before the ``queued`` row: the message is redelivered and handled normally;
* between the row and the ack: the redelivered message is a duplicate (acked);
* between the ack and the ``submitting`` record: the run is ``queued``; the next
  start-up starts it;
* between the ``submitting`` record and the recorded handle: the job may or may
  not have been submitted. The next start-up reads the run's claim: a local
  owner process is re-attached; an unclaimed run is submitted again (if the
  first submission does start after all, the two trainers race for the claim
  and one refuses: never two trainers for one run);
* with a handle recorded: the next start-up re-attaches to the job, or settles
  it if it ended meanwhile.

Runs whose latest status is ``queued`` or ``submitting`` and that no in-flight
record describes (state dir lost, another launcher) are started; the claim
keeps that safe. Runs ``running`` without a record are only reported.

Shutdown (SIGTERM/SIGINT, or ``--duration`` elapsed): stop pulling, wait up to
``--grace-seconds`` for local jobs to finish, then stop the rest, release their
claims and record them ``queued`` again (the next launcher start re-runs them).
Vertex jobs keep running remotely; the next launcher re-attaches to them. The
stats file is written last.

Stats file keys: ``triggers_received``, ``duplicate_triggers``,
``malformed_triggers``, ``runs_started``, ``runs_succeeded``, ``runs_rejected``,
``runs_failed``, ``runs_refused``, ``runs_adopted``, ``rollbacks``,
``rollbacks_skipped``, ``in_flight`` and a few more (``pending``,
``runs_requeued``, ``runs_recovered``, ``errors``, ``current_version``,
``last_rollback``, ``updated_at``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dataset.config import DatasetConfig, load_config
from dataset.times import rfc3339
from trainer import runs
from trainer.backends.base import Backend, JobArgs
from trainer.backends.local import LocalProcessBackend
from trainer.supervisor import InFlight, JobSupervisor
from trainer.trigger_messages import MalformedTrigger, Run, parse_trigger

logger = logging.getLogger("trainer.launcher")

API_TIMEOUT_SECONDS = 30.0
PROGRESS_EVERY_SECONDS = 30.0


def _now_iso() -> str:
    return rfc3339(time.time())


STAT_KEYS = (
    "triggers_received",
    "duplicate_triggers",
    "malformed_triggers",
    "runs_started",
    "runs_succeeded",
    "runs_rejected",
    "runs_failed",
    "runs_refused",
    "runs_adopted",
    "runs_requeued",
    "runs_recovered",
    "errors",
)


class Launcher:
    """The launcher's state and loop; see the module docstring.

    Args:
        config: the dataset config.
        project: project of the subscription and (``bq_project``) BigQuery.
        subscription: ``projects/<p>/subscriptions/<s>`` of the retrain topic.
        bq_dataset: the BigQuery dataset with ``training_runs``/``prediction_quality``.
        backend: where jobs run.
        bq_client: a ``google.cloud.bigquery.Client``.
        subscriber: a ``pubsub_v1.SubscriberClient`` (default: a new one).
        monitor: a ``trainer.rollback_monitor.RollbackMonitor`` (None: no monitor).
        registry_root: where run claims live (default: the backend's ``--registry``).
        state_dir: in-flight records (``inflight/``) and the local backend's logs.
        stats_file: JSON stats path (default ``<state_dir>/stats.json``).
        lookback_days: lower bound of ``training_runs.recorded_at`` in queries.
    """

    def __init__(
        self,
        config: DatasetConfig,
        project: str,
        subscription: str,
        bq_dataset: str,
        backend: Backend,
        bq_client,
        *,
        subscriber=None,
        monitor=None,
        registry_root: str | None = None,
        bq_project: str | None = None,
        max_concurrent: int = 1,
        poll_seconds: float = 2.0,
        monitor_seconds: float = 15.0,
        grace_seconds: float = 120.0,
        state_dir: str | os.PathLike = ".local/launcher",
        stats_file: str | os.PathLike | None = None,
        lookback_days: float = runs.DEFAULT_LOOKBACK_DAYS,
        clock: Callable[[], float] = time.monotonic,
    ):
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be >= 1")
        self.config = config
        self.project = project
        self.subscription = subscription
        self.backend = backend
        self._subscriber = subscriber
        self.monitor = monitor
        self.max_concurrent = max_concurrent
        self.poll_seconds = poll_seconds
        self.monitor_seconds = monitor_seconds
        self.grace_seconds = grace_seconds
        self.state_dir = Path(state_dir)
        self.stats_file = Path(stats_file) if stats_file else self.state_dir / "stats.json"
        self.clock = clock
        self.stats: dict[str, Any] = dict.fromkeys(STAT_KEYS, 0)
        self.jobs = JobSupervisor(
            config,
            backend,
            bq_client,
            bq_project or project,
            bq_dataset,
            registry_root=registry_root or backend.job_args.registry,
            state_dir=self.state_dir,
            stats=self.stats,
            lookback_days=lookback_days,
            clock=clock,
        )
        self.stopping = False
        self._last_monitor = -math.inf
        self._last_progress = clock()

    @property
    def in_flight(self) -> dict[str, InFlight]:
        return self.jobs.in_flight

    @property
    def pending(self):
        return self.jobs.pending

    @property
    def subscriber(self):
        if self._subscriber is None:
            from google.cloud import pubsub_v1

            self._subscriber = pubsub_v1.SubscriberClient()
        return self._subscriber

    @property
    def free_slots(self) -> int:
        return max(0, self.max_concurrent - len(self.in_flight))

    def recover(self) -> None:
        """Re-attaches to a previous launcher's jobs; queues runs never started."""
        self.jobs.recover()

    def reap(self) -> None:
        self.jobs.reap()

    def start_pending(self) -> None:
        if not self.stopping:
            self.jobs.start_pending(self.max_concurrent)

    # ------------------------------------------------------------ triggers

    def _ack(self, ack_id: str) -> None:
        self.subscriber.acknowledge(
            request={"subscription": self.subscription, "ack_ids": [ack_id]},
            timeout=API_TIMEOUT_SECONDS,
        )

    def handle_message(
        self,
        ack_id: str,
        data: bytes,
        attributes: Mapping[str, str],
        received_at: float | None = None,
    ) -> str:
        """Handles one pulled trigger; returns ``malformed``/``duplicate``/``queued``/``error``.

        ``received_at``: epoch seconds the message was pulled (default: now); the
        run carries it, so its launch is timed from the trigger's receipt.
        """
        received_at = time.time() if received_at is None else received_at
        self.stats["triggers_received"] += 1
        try:
            trigger = parse_trigger(data, attributes, self.config.name)
        except MalformedTrigger as e:
            logger.warning("malformed trigger (acked and dropped): %s; data=%r", e, data[:200])
            self.stats["malformed_triggers"] += 1
            self._ack(ack_id)
            return "malformed"
        run = Run.from_trigger(trigger, received_at)
        try:
            existing = self.jobs.latest(trigger.trigger_id)
            if existing is not None:
                logger.info(
                    "duplicate trigger %s (run %s is %s): acked",
                    trigger.trigger_id,
                    existing.get("run_id"),
                    existing.get("status"),
                )
                self.stats["duplicate_triggers"] += 1
                self._ack(ack_id)
                return "duplicate"
            self.jobs.record(
                run,
                "queued",
                seq=1,  # no row of this run exists
                reason=trigger.reason,
                data_start=trigger.event_time_start,
                data_end=trigger.event_time_end,
            )
        except Exception:
            # Not acked: Pub/Sub redelivers it after the ack deadline.
            logger.exception(
                "could not queue trigger %s; it will be redelivered", trigger.trigger_id
            )
            self.stats["errors"] += 1
            return "error"
        logger.info(
            "queued %s for trigger %s (%s, %s new examples)",
            run.run_id,
            trigger.trigger_id,
            trigger.reason,
            trigger.new_examples,
        )
        try:
            self._ack(ack_id)
        except Exception:  # redelivery will be a duplicate: harmless
            logger.exception("ack of trigger %s failed", trigger.trigger_id)
        if not self.free_slots or self.jobs.start(run) == "deferred":
            self.pending.append(run)
        return "queued"

    def pull_once(self, timeout: float | None = None) -> int:
        """Pulls up to ``free_slots`` triggers and handles them; returns how many arrived."""
        from google.api_core import exceptions as gexc

        if self.stopping or not self.free_slots or self.pending:
            return 0
        try:
            response = self.subscriber.pull(
                request={"subscription": self.subscription, "max_messages": self.free_slots},
                timeout=timeout if timeout is not None else max(1.0, self.poll_seconds),
                retry=None,  # the loop is the retry; a client retry could block for a minute
            )
        except (gexc.DeadlineExceeded, gexc.ServiceUnavailable) as e:
            logger.debug("pull: %s", type(e).__name__)
            return 0
        received_at = time.time()
        for received in response.received_messages:
            msg = received.message
            self.handle_message(received.ack_id, msg.data, dict(msg.attributes), received_at)
        return len(response.received_messages)

    # ------------------------------------------------------------ monitor

    def monitor_once(self) -> bool:
        """One rollback-monitor check (``RollbackMonitor.check_once``); False without a monitor."""
        if self.monitor is None:
            return False
        return self.monitor.check_once()

    # ------------------------------------------------------------ loop

    def snapshot(self) -> dict[str, Any]:
        monitor = dict(self.monitor.stats) if self.monitor is not None else {}
        errors = self.stats["errors"] + monitor.pop("errors", 0)
        return {
            "rollbacks": 0,
            "rollbacks_skipped": 0,
            "current_version": None,
            "last_rollback": None,
            "monitor": None,
            **monitor,
            **self.stats,
            "errors": errors,
            "in_flight": len(self.in_flight),
            "in_flight_runs": sorted(self.in_flight),
            "pending": len(self.pending),
            "backend": self.backend.name,
            "stopping": self.stopping,
            "updated_at": _now_iso(),
        }

    def write_stats(self) -> None:
        self.stats_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.stats_file.with_name(self.stats_file.name + ".tmp")
        tmp.write_text(json.dumps(self.snapshot(), indent=2, default=str))
        tmp.replace(self.stats_file)

    def _progress(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last_progress < PROGRESS_EVERY_SECONDS:
            return
        self._last_progress = now
        s = self.snapshot()
        logger.info(
            "progress: triggers=%d dup=%d malformed=%d started=%d succeeded=%d rejected=%d "
            "failed=%d rollbacks=%d in_flight=%d pending=%d current=%s",
            s["triggers_received"],
            s["duplicate_triggers"],
            s["malformed_triggers"],
            s["runs_started"],
            s["runs_succeeded"],
            s["runs_rejected"],
            s["runs_failed"],
            s["rollbacks"],
            s["in_flight"],
            s["pending"],
            s["current_version"],
        )

    def step(self, pull_timeout: float | None = None) -> int:
        """One loop iteration; returns how many trigger messages were pulled."""
        pulled = 0
        for stage in (self.reap, self.start_pending):
            try:
                stage()
            except Exception:
                logger.exception("%s failed", stage.__name__)
                self.stats["errors"] += 1
        try:
            pulled = self.pull_once(pull_timeout)
        except Exception:
            logger.exception("pull failed")
            self.stats["errors"] += 1
        if self.clock() - self._last_monitor >= self.monitor_seconds:
            self._last_monitor = self.clock()
            try:
                self.monitor_once()
            except Exception:
                logger.exception("monitor failed")
                self.stats["errors"] += 1
        self.write_stats()
        self._progress()
        return pulled

    def request_stop(self, signum: int | None = None, frame=None) -> None:
        if not self.stopping:
            logger.info(
                "stopping (%s): no more pulls",
                signal.Signals(signum).name if signum else "requested",
            )
        self.stopping = True

    def run(self, duration: float | None = None) -> dict[str, Any]:
        """Recovers, loops until stopped (or ``duration`` seconds), shuts down; returns stats."""
        deadline = None if duration is None else self.clock() + duration
        try:
            self.recover()
        except Exception:
            logger.exception("start-up recovery failed; continuing")
            self.stats["errors"] += 1
        logger.info(
            "launcher for %s on %s: backend %s, max %d concurrent",
            self.config.name,
            self.subscription,
            self.backend.name,
            self.max_concurrent,
        )
        while not self.stopping:
            t0 = self.clock()
            pulled = self.step()
            if deadline is not None and self.clock() >= deadline:
                self.request_stop()
                break
            if not pulled:  # a pull waits by itself only when there was a slot
                remaining = self.poll_seconds - (self.clock() - t0)
                if remaining > 0:
                    time.sleep(
                        remaining
                        if deadline is None
                        else min(remaining, max(0.0, deadline - self.clock()))
                    )
        return self.shutdown()

    def shutdown(self) -> dict[str, Any]:
        """Lets local jobs finish up to the grace period, re-queues the rest, writes stats."""
        self.stopping = True
        if self.in_flight and not self.backend.keeps_running_on_shutdown:
            logger.info(
                "waiting up to %.0f s for %d running job(s)",
                self.grace_seconds,
                len(self.in_flight),
            )
            self.jobs.stop_unfinished(self.grace_seconds)
        elif self.in_flight:
            logger.info(
                "%d %s job(s) keep running; the next launcher re-attaches to them",
                len(self.in_flight),
                self.backend.name,
            )
        self.backend.close()
        self.write_stats()
        self._progress(force=True)
        if self._subscriber is not None:
            with contextlib.suppress(Exception):
                self._subscriber.close()
        return self.snapshot()


# ---------------------------------------------------------------- CLI


def _build_parser() -> argparse.ArgumentParser:
    from trainer.backends import vertex

    p = argparse.ArgumentParser(
        prog="python -m trainer.launcher",
        description="Start training runs for retrain triggers; roll back bad versions.",
    )
    p.add_argument("--project", required=True)
    p.add_argument("--config", required=True, help="dataset config YAML/JSON")
    p.add_argument(
        "--subscription", required=True, help="projects/<p>/subscriptions/<s> on the retrain topic"
    )
    p.add_argument("--bq_dataset", required=True)
    p.add_argument("--bq_project", help="project of the BigQuery dataset (default --project)")
    p.add_argument("--registry", required=True, help="model registry root (dir or gs://)")
    p.add_argument("--backend", choices=("local", "vertex"), default="local")
    p.add_argument("--max-concurrent", type=int, default=1)
    p.add_argument(
        "--warm-trainer",
        action="store_true",
        help="local backend: keep one trainer process with TensorFlow imported, waiting for "
        "the next run (saves its start-up, 10-28 s here; costs ~0.7 GiB while idle)",
    )
    p.add_argument("--poll-seconds", type=float, default=2.0)
    p.add_argument("--monitor-seconds", type=float, default=15.0)
    p.add_argument(
        "--baseline-windows",
        type=int,
        default=10,
        help="previous version's newest quality windows to compare with",
    )
    p.add_argument("--no-monitor", action="store_true", help="disable automatic rollback")
    p.add_argument(
        "--grace-seconds",
        type=float,
        default=120.0,
        help="on shutdown, how long local jobs may still run",
    )
    p.add_argument(
        "--lookback-days",
        type=float,
        default=runs.DEFAULT_LOOKBACK_DAYS,
        help="queries read partitions this many days back (default %(default)s)",
    )
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--state-dir", help="default .local/launcher/<dataset>")
    p.add_argument("--stats-file", help="default <state dir>/stats.json")
    p.add_argument("--trainer-program", help=argparse.SUPPRESS)  # tests: replaces python -m
    vertex.add_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = _build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
        if not re.match(r"^projects/[^/]+/subscriptions/[^/]+$", args.subscription):
            raise ValueError("--subscription must be projects/<project>/subscriptions/<name>")
        if args.max_concurrent < 1:
            raise ValueError("--max-concurrent must be >= 1")
        if not args.lookback_days > 0:
            raise ValueError("--lookback-days must be positive")
        if args.warm_trainer and args.backend != "local":
            raise ValueError("--warm-trainer is for --backend local only")
        bq_project = args.bq_project or args.project
        state_dir = Path(args.state_dir or Path(".local/launcher") / config.name)
        job_args = JobArgs(args.config, bq_project, args.bq_dataset, args.registry)
        if args.backend == "vertex":
            from trainer.backends import vertex

            backend: Backend = vertex.backend_from_args(args, job_args)
        else:
            program = args.trainer_program.split() if args.trainer_program else None
            backend = LocalProcessBackend(
                job_args, state_dir, program=program, warm=args.warm_trainer
            )
        from dataset.resources import bigquery_client

        client = bigquery_client(bq_project)
        monitor = None
        if not args.no_monitor:
            from model.registry import ModelRegistry
            from trainer.rollback_monitor import RollbackMonitor

            monitor = RollbackMonitor(
                config,
                ModelRegistry(args.registry),
                client,
                bq_project,
                args.bq_dataset,
                baseline_windows=args.baseline_windows,
                lookback_days=args.lookback_days,
            )
        launcher = Launcher(
            config,
            args.project,
            args.subscription,
            args.bq_dataset,
            backend,
            client,
            monitor=monitor,
            registry_root=args.registry,
            bq_project=bq_project,
            max_concurrent=args.max_concurrent,
            poll_seconds=args.poll_seconds,
            monitor_seconds=args.monitor_seconds,
            grace_seconds=args.grace_seconds,
            state_dir=state_dir,
            stats_file=args.stats_file,
            lookback_days=args.lookback_days,
        )
    except (ValueError, subprocess.CalledProcessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, launcher.request_stop)
    signal.signal(signal.SIGINT, launcher.request_stop)
    stats = launcher.run(duration=args.duration)
    print(json.dumps(stats, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
