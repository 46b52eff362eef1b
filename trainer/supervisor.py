"""Supervision of training jobs: start, re-attach, reap, settle and re-queue them.

The launcher's job book-keeping (``trainer.launcher`` runs the service loop).
For each job it keeps an in-flight record in ``<state dir>/inflight/<run_id>.json``,
written *before* the backend submits (with the submission's ``attempt_id``)
and completed with the job's handle after it, so that a restarted launcher can
tell a job it can re-attach to from a submission that may not have happened.
Run ownership is decided by the trainers' claims (``trainer.claims``); see
``trainer.launcher`` for the crash cases.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dataset.config import DatasetConfig
from dataset.times import rfc3339
from trainer import claims, runs
from trainer.backends.base import Backend, JobState
from trainer.trigger_messages import Run

logger = logging.getLogger("trainer.launcher")

TERMINAL_STATUSES = runs.TERMINAL_STATUSES


def _now_iso() -> str:
    return rfc3339(time.time())


@dataclasses.dataclass
class InFlight:
    """A job this launcher supervises."""

    run: Run
    handle: Any
    attempt_id: str | None
    started: float
    last_poll: float = 0.0


class JobSupervisor:
    """The in-flight and pending runs of one launcher, and how they start and end.

    Args:
        config: the dataset config.
        backend: where jobs run.
        bq_client: a ``google.cloud.bigquery.Client``.
        bq_project / bq_dataset: where ``training_runs`` is.
        registry_root: where run claims live.
        state_dir: in-flight records go to ``<state_dir>/inflight/``.
        stats: the launcher's counters (``runs_*``, ``errors``), updated here.
        lookback_days: lower bound of ``training_runs.recorded_at`` in queries.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        config: DatasetConfig,
        backend: Backend,
        bq_client,
        bq_project: str,
        bq_dataset: str,
        *,
        registry_root: str,
        state_dir: str | os.PathLike,
        stats: dict[str, Any],
        lookback_days: float = runs.DEFAULT_LOOKBACK_DAYS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.config = config
        self.backend = backend
        self.client = bq_client
        self.bq_project = bq_project
        self.bq_dataset = bq_dataset
        self.registry_root = registry_root
        self.inflight_dir = Path(state_dir) / "inflight"
        self.stats = stats
        self.lookback_days = lookback_days
        self.clock = clock
        self.in_flight: dict[str, InFlight] = {}
        self.pending: collections.deque[Run] = collections.deque()

    @property
    def runs_table(self) -> str:
        return runs.runs_table(self.bq_project, self.bq_dataset, self.config)

    def record(self, run: Run, status: str, **fields: Any) -> None:
        """Appends a status row (``seq``: the run's next)."""
        row = {
            "run_id": run.run_id,
            "trigger_id": run.trigger_id,
            "dataset": run.dataset,
            "backend": self.backend.name,
            "status": status,
            "recorded_at": _now_iso(),
            **fields,
        }
        runs.record_run_status(self.client, self.runs_table, row)

    def latest(self, trigger_id: str) -> dict | None:
        return runs.latest_run_status(
            self.client,
            self.bq_project,
            self.bq_dataset,
            self.config,
            trigger_id,
            self.lookback_days,
        )

    def _record_path(self, run_id: str) -> Path:
        return self.inflight_dir / f"{run_id}.json"

    def _write_record(self, run: Run, attempt_id: str | None, handle: Any = None) -> None:
        """The in-flight record: before the submit without a handle, after it with one."""
        self.inflight_dir.mkdir(parents=True, exist_ok=True)
        record = {
            **dataclasses.asdict(run),
            "backend": self.backend.name,
            "attempt_id": attempt_id,
            "recorded_at": _now_iso(),
            **({} if handle is None else self.backend.describe(handle)),
        }
        path = self._record_path(run.run_id)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(path)

    def _drop_record(self, run_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._record_path(run_id).unlink()

    def _track(self, run: Run, attempt_id: str | None, handle: Any, counter: str) -> None:
        """Holds ``run``'s job as in flight, records it on disk, counts it in ``counter``."""
        self.in_flight[run.run_id] = InFlight(run, handle, attempt_id, self.clock())
        self._write_record(run, attempt_id, handle)
        self.stats[counter] += 1

    def _adopt(self, run: Run, owner: Mapping[str, Any] | None) -> bool:
        """Re-attaches to the trainer that owns ``run`` (per its claim), if the backend can."""
        handle = self.backend.adopt(run, owner or {})
        if handle is None:
            return False
        attempt = (owner or {}).get("attempt_id")
        self._track(run, attempt, handle, "runs_adopted")
        logger.info(
            "re-attached to %s's owner (attempt %s): %s",
            run.run_id,
            attempt,
            self.backend.describe(handle),
        )
        return True

    # ------------------------------------------------------------ start-up

    def _read_records(self) -> list[tuple[Run, dict]]:
        found = []
        if not self.inflight_dir.is_dir():
            return found
        for path in sorted(self.inflight_dir.glob("*.json")):
            try:
                record = json.loads(path.read_text())
                run = Run(
                    record["run_id"], record["trigger_id"], record["dataset"], record.get("reason")
                )
            except (OSError, ValueError, KeyError) as e:
                logger.warning("ignoring unreadable in-flight record %s: %s", path, e)
                continue
            if record.get("backend") != self.backend.name:
                logger.warning(
                    "in-flight record %s is for backend %s, not %s; left alone",
                    path,
                    record.get("backend"),
                    self.backend.name,
                )
                continue
            found.append((run, record))
        return found

    def _recover_unsubmitted(self, run: Run) -> None:
        """A record written before the submit, without a handle: was the job started?"""
        latest = self.latest(run.trigger_id)
        if (latest or {}).get("status") in TERMINAL_STATUSES:
            self._drop_record(run.run_id)
            return
        owner = claims.read(self.registry_root, run.run_id)
        if owner is None:
            logger.info("recovering %s: submitting, not claimed; starting it", run.run_id)
            self._drop_record(run.run_id)
            self.pending.append(run)
            self.stats["runs_recovered"] += 1
        elif not self._adopt(run, owner):
            logger.warning(
                "%s is claimed by attempt %s on %s; left to that trainer",
                run.run_id,
                owner.get("attempt_id"),
                owner.get("host"),
            )
            self._drop_record(run.run_id)

    def recover(self) -> None:
        """Re-attaches to jobs of a previous launcher; starts runs recorded but never started."""
        adopted: set[str] = set()
        for run, record in self._read_records():
            adopted.add(run.run_id)
            attempt = record.get("attempt_id")
            if "kind" not in record:
                self._recover_unsubmitted(run)
                continue
            handle = self.backend.reattach(record)
            if handle is None:
                logger.info("%s ended while the launcher was away; settling it", run.run_id)
                self._settle(
                    run, attempt, JobState("unknown", "job ended while the launcher was away")
                )
                continue
            logger.info("re-attached to %s (%s)", run.run_id, self.backend.describe(handle))
            self.in_flight[run.run_id] = InFlight(run, handle, attempt, self.clock())
        rows = runs.latest_run_statuses(
            self.client,
            self.bq_project,
            self.bq_dataset,
            self.config,
            ("queued", "submitting", "running"),
            self.lookback_days,
        )
        queued = {r.run_id for r in self.pending}
        for row in rows:
            run_id = row["run_id"]
            if run_id in adopted or run_id in self.in_flight or run_id in queued:
                continue
            if row["status"] == "running":
                logger.warning(
                    "run %s is 'running' in %s but no in-flight record describes it "
                    "(another launcher, or a lost state dir); not touched",
                    run_id,
                    self.runs_table,
                )
                continue
            logger.info("recovering %s: %s but never started here", run_id, row["status"])
            self.pending.append(
                Run(
                    run_id,
                    row["trigger_id"],
                    row.get("dataset") or self.config.name,
                    row.get("reason"),
                )
            )
            self.stats["runs_recovered"] += 1

    # ------------------------------------------------------------ running jobs

    def start(self, run: Run) -> str:
        """Records ``submitting`` and the in-flight record, then submits ``run``.

        Returns:
            ``started``; ``failed`` (the submit failed; recorded ``failed``); or
            ``deferred`` (``submitting`` could not be recorded, nothing was
            submitted: try again later).
        """
        attempt_id = claims.new_attempt_id()
        try:
            self.record(run, "submitting", reason=run.reason)
        except Exception:
            logger.exception("could not record %s as submitting; will try again", run.run_id)
            self.stats["errors"] += 1
            return "deferred"
        self._write_record(run, attempt_id)
        try:
            handle = self.backend.submit(run, attempt_id)
        except Exception as e:
            logger.exception("could not start %s", run.run_id)
            self.stats["runs_failed"] += 1
            with contextlib.suppress(Exception):
                self.record(
                    run,
                    "failed",
                    error=f"submit failed: {type(e).__name__}: {e}"[:2000],
                    finished_at=_now_iso(),
                )
            self._drop_record(run.run_id)
            return "failed"
        self._track(run, attempt_id, handle, "runs_started")
        launch = ""
        if run.received_at is not None:  # trigger received -> job launched
            seconds = round(time.time() - run.received_at, 3)
            self.stats["last_launch"] = {"run_id": run.run_id, "launch_s": seconds}
            launch = f" {seconds:.2f} s after the trigger arrived"
        logger.info(
            "started %s (trigger %s, %s) on %s%s: %s",
            run.run_id,
            run.trigger_id,
            run.reason,
            self.backend.name,
            launch,
            self.backend.describe(handle),
        )
        return "started"

    def _settle(self, run: Run, attempt_id: str | None, job: JobState) -> str:
        """Accounts for a job that ended; returns the run's status as counted.

        A terminal status recorded by the trainer is counted as it is. A job
        whose trainer never owned the run (it refused, or the claim names
        another attempt) is ``refused``: the owner is adopted if the backend
        can (``adopted``), else the run is left to it. Otherwise the job ended
        without a terminal status: ``failed`` is recorded.
        """
        latest = self.latest(run.trigger_id)
        status = (latest or {}).get("status")
        if status not in TERMINAL_STATUSES:
            owner = claims.read(self.registry_root, run.run_id)
            owned_elsewhere = owner is not None and owner.get("attempt_id") not in (
                None,
                attempt_id,
            )
            if job.state == "refused" or owned_elsewhere:
                self._drop_record(run.run_id)
                if self._adopt(run, owner):
                    return "adopted"
                self.stats["runs_refused"] += 1
                logger.warning(
                    "%s: this submission never owned the run (%s); left to attempt %s",
                    run.run_id,
                    job.detail or job.state,
                    (owner or {}).get("attempt_id"),
                )
                return "refused"
            if job.state == "exited":
                error = "trainer exited successfully without recording a terminal status"
            else:
                error = job.detail or "job ended without recording a terminal status"
            self.record(run, "failed", error=error[:2000], finished_at=_now_iso())
            status = "failed"
        key = f"runs_{status}"
        self.stats[key] = self.stats.get(key, 0) + 1
        self._drop_record(run.run_id)
        level = logging.INFO if status != "failed" else logging.WARNING
        logger.log(
            level,
            "%s finished: %s%s",
            run.run_id,
            status,
            f" ({job.detail})" if job.detail and status == "failed" else "",
        )
        return status

    def reap(self) -> None:
        """Polls in-flight jobs and settles the finished ones."""
        now = self.clock()
        for run_id, entry in list(self.in_flight.items()):
            if now - entry.last_poll < self.backend.poll_interval_seconds:
                continue
            entry.last_poll = now
            job = self.backend.poll(entry.handle)
            if not job.done:
                continue
            del self.in_flight[run_id]
            try:
                self._settle(entry.run, entry.attempt_id, job)
            except Exception:
                logger.exception("could not settle %s; will retry", run_id)
                self.stats["errors"] += 1
                self.in_flight.setdefault(run_id, entry)

    def start_pending(self, max_in_flight: int) -> None:
        """Starts pending runs, oldest first, while there are free slots."""
        while self.pending and len(self.in_flight) < max_in_flight:
            run = self.pending.popleft()
            if self.start(run) == "deferred":
                self.pending.appendleft(run)
                return

    def stop_unfinished(self, grace_seconds: float) -> None:
        """Waits up to ``grace_seconds`` for jobs to end, then stops and re-queues the rest.

        A stopped run's claim is released (its trainer is gone), then the run is
        recorded ``queued`` again, so the next launcher start runs it.
        """
        deadline = self.clock() + grace_seconds
        while self.in_flight and self.clock() < deadline:
            self.reap()
            if self.in_flight:
                time.sleep(min(0.5, max(0.0, deadline - self.clock())))
        for run_id, entry in list(self.in_flight.items()):
            logger.warning(
                "%s still running after the grace period: stopping it and "
                "re-queueing it for the next start",
                run_id,
            )
            self.backend.stop(entry.handle)
            try:
                latest = self.latest(entry.run.trigger_id)
                if (latest or {}).get("status") in TERMINAL_STATUSES:
                    self.stats[f"runs_{latest['status']}"] += 1
                else:
                    if entry.attempt_id:  # its trainer is stopped: free the claim
                        claims.release(self.registry_root, run_id, entry.attempt_id)
                    self.record(
                        entry.run,
                        "queued",
                        reason="re-queued: the launcher shut down before the run finished",
                    )
                    self.stats["runs_requeued"] += 1
                self._drop_record(run_id)
            except Exception:
                logger.exception("could not re-queue %s", run_id)
                self.stats["errors"] += 1
            del self.in_flight[run_id]
