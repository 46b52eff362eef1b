"""The rollback monitor: rolls back a new model version that does worse online.

The current version is judged against the version it replaced (``CURRENT``'s
``previous``) on the ``prediction_quality`` table (progressive validation in
the stream): the current version's windows computed since its promotion
versus the previous version's most recent ``baseline_windows`` windows.
``should_roll_back`` decides (pure); an online drop must also hold offline, on
the same recent labeled rows (``RollbackMonitor.confirm_offline``), because
under concept drift every version's online quality falls.

A rollback is a compare-and-swap: ``ModelRegistry.rollback(to_version=previous,
if_current=<the version judged>)``. If ``CURRENT`` moved meanwhile (the trainer
promoted a newer version while the monitor read BigQuery and loaded models), the
registry raises ``CurrentChanged``; the monitor skips the rollback, logs it and
counts ``rollbacks_skipped``: it never moves a version it did not judge. A done
rollback is recorded as a ``rolled_back`` row of the training run that produced
the version. A version that became current by a rollback is not judged (that
would flip-flop).

Runs inside the launcher (``python -m trainer.launcher``, unless
``--no-monitor``) or as its own process::

    python -m trainer.rollback_monitor --project P --config configs/traffic.yaml \\
        --bq_dataset D --registry .local/registry [--monitor-seconds 15] \\
        [--baseline-windows 10] [--lookback-days 30] [--duration S] [--stats-file F]

Queries bound the partition columns: ``prediction_quality.window_start`` and
``training_runs.recorded_at`` by ``--lookback-days``; the offline check reads
``training_examples`` from the promotion time on (``event_time``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dataset.config import DatasetConfig, RetrainingPolicy, load_config
from dataset.times import rfc3339, to_datetime
from trainer import runs

logger = logging.getLogger(__name__)

_TOLERANCE = 1e-9  # float noise: a drop of exactly the margin is not "more than" it
MONITOR_STAT_KEYS = ("rollbacks", "rollbacks_skipped", "errors")


def _now_iso() -> str:
    return rfc3339(time.time())


def quality_table(project: str, dataset: str, config: DatasetConfig) -> str:
    """``project.dataset.prediction_quality``."""
    return f"{project}.{dataset}.{config.tables.prediction_quality}"


def quality_rows(
    client,
    project: str,
    dataset: str,
    config: DatasetConfig,
    versions: Sequence[str],
    lookback_days: float = runs.DEFAULT_LOOKBACK_DAYS,
) -> list[dict]:
    """``prediction_quality`` rows of the given model versions, windows in the lookback."""
    names = [f"@v{i}" for i in range(len(versions))]
    sql = (
        "SELECT model_version, window_start, window_end, examples, accuracy, log_loss, "
        f"mae, rmse, pane_index, computed_at FROM `{quality_table(project, dataset, config)}` "
        f"WHERE window_start >= @since AND model_version IN ({', '.join(names)})"
    )
    params = [("since", "TIMESTAMP", runs.lookback_start(lookback_days))]
    params += [(f"v{i}", "STRING", v) for i, v in enumerate(versions)]
    return runs.query_rows(client, sql, params)


# ---------------------------------------------------------------- the decision (pure)


def summarize_quality(
    rows: Iterable[Mapping[str, Any]],
    since: dt.datetime | str | None = None,
    last_windows: int | None = None,
) -> dict[str, Any]:
    """Aggregates ``prediction_quality`` rows of ONE model version.

    The stream writes accumulating panes (EARLY/ON_TIME/LATE) per window, so
    only the latest pane of each window counts (highest ``pane_index``; rows
    written before that column existed rank below, by ``computed_at``, then
    most examples). Windows computed before ``since`` are left out; with
    ``last_windows`` only the newest that many windows (by ``window_end``) count.

    Returns:
        ``{"examples", "windows", "accuracy", "log_loss", "mae", "rmse"}``:
        example-weighted means (rmse pooled as sqrt of the weighted mean square);
        a metric is None if no window has it.
    """
    since_dt = to_datetime(since) if since is not None else None
    latest: dict[Any, Mapping[str, Any]] = {}
    for row in rows:
        key = to_datetime(row["window_start"])
        pane = row.get("pane_index")
        order = (
            -1 if pane is None else int(pane),
            to_datetime(row["computed_at"])
            if row.get("computed_at") is not None
            else dt.datetime.min.replace(tzinfo=dt.UTC),
            int(row.get("examples") or 0),
        )
        kept = latest.get(key)
        if kept is None or order > kept["_order"]:
            latest[key] = {**row, "_order": order}
    windows = list(latest.values())
    if since_dt is not None:
        windows = [w for w in windows if w["_order"][1] >= since_dt]
    windows.sort(key=lambda w: to_datetime(w.get("window_end") or w["window_start"]))
    if last_windows is not None:
        windows = windows[-last_windows:] if last_windows > 0 else []
    total = sum(int(w.get("examples") or 0) for w in windows)
    out: dict[str, Any] = {"examples": total, "windows": len(windows)}
    for metric in ("accuracy", "log_loss", "mae", "rmse"):
        pairs = [
            (int(w.get("examples") or 0), float(w[metric]))
            for w in windows
            if w.get(metric) is not None and int(w.get("examples") or 0) > 0
        ]
        n = sum(p[0] for p in pairs)
        if not n:
            out[metric] = None
        elif metric == "rmse":
            out[metric] = math.sqrt(sum(k * v * v for k, v in pairs) / n)
        else:
            out[metric] = sum(k * v for k, v in pairs) / n
    return out


def should_roll_back(
    current_quality: Mapping[str, Any] | None,
    previous_quality: Mapping[str, Any] | None,
    policy: RetrainingPolicy,
    task: str,
) -> tuple[bool, str]:
    """Whether the current model version should be rolled back (pure).

    Both versions need at least ``policy.quality_min_examples`` scored examples.
    Binary classification: roll back when the current accuracy is more than
    ``policy.rollback_margin`` (absolute) below the previous version's.
    Regression: roll back when the current RMSE exceeds the previous one by more
    than ``rollback_margin`` *relative* to it (RMSE has the label's scale, so an
    absolute margin would mean different things per dataset).

    Args:
        current_quality / previous_quality: ``summarize_quality`` results (or None).
        policy: the dataset's retraining policy.
        task: ``binary_classification`` or ``regression``.

    Returns:
        (decision, reason): the reason explains either way.
    """
    need = policy.quality_min_examples
    margin = policy.rollback_margin
    cur_n = int((current_quality or {}).get("examples") or 0)
    prev_n = int((previous_quality or {}).get("examples") or 0)
    if cur_n < need:
        return False, f"current version has {cur_n} scored examples, needs {need}"
    if prev_n < need:
        return False, f"previous version has {prev_n} scored examples, needs {need}"
    if task == "regression":
        cur, prev = current_quality.get("rmse"), previous_quality.get("rmse")
        if cur is None or prev is None:
            return False, "no rmse to compare"
        limit = prev * (1.0 + margin)
        text = (
            f"online rmse {cur:.4f} ({cur_n} examples) vs previous version {prev:.4f} "
            f"({prev_n} examples); limit {limit:.4f} (+{margin:.0%})"
        )
        return cur > limit + _TOLERANCE, text
    if task != "binary_classification":
        raise ValueError(f"unknown task {task!r}")
    cur, prev = current_quality.get("accuracy"), previous_quality.get("accuracy")
    if cur is None or prev is None:
        return False, "no accuracy to compare"
    drop = prev - cur
    text = (
        f"online accuracy {cur:.4f} ({cur_n} examples) vs previous version {prev:.4f} "
        f"({prev_n} examples): drop {drop:+.4f}, margin {margin:.4f}"
    )
    return drop > margin + _TOLERANCE, text


# ---------------------------------------------------------------- the monitor


class RollbackMonitor:
    """Judges the current model version; rolls it back (compare-and-swap) if worse.

    Args:
        config: the dataset config (``retraining`` policy, label task, tables).
        registry: a ``model.registry.ModelRegistry``.
        bq_client: a ``google.cloud.bigquery.Client``.
        bq_project / bq_dataset: where ``prediction_quality``, ``training_runs``
            and ``training_examples`` are.
        baseline_windows: the previous version's newest windows to compare with.
        lookback_days: lower bound of the partition columns in queries.
    """

    def __init__(
        self,
        config: DatasetConfig,
        registry,
        bq_client,
        bq_project: str,
        bq_dataset: str,
        *,
        baseline_windows: int = 10,
        lookback_days: float = runs.DEFAULT_LOOKBACK_DAYS,
    ):
        self.config = config
        self.registry = registry
        self.client = bq_client
        self.bq_project = bq_project
        self.bq_dataset = bq_dataset
        self.baseline_windows = baseline_windows
        self.lookback_days = lookback_days
        self.stats: dict[str, Any] = dict.fromkeys(MONITOR_STAT_KEYS, 0)
        self.stats.update(current_version=None, last_rollback=None, monitor=None)
        self._notes: dict[str, str] = {}

    def _note(self, version: str, text: str) -> None:
        """Logs a finding once per (version, text)."""
        if self._notes.get(version) != text:
            self._notes[version] = text
            logger.info("monitor: %s: %s", version, text)
        self.stats["monitor"] = {"version": version, "note": text, "at": _now_iso()}

    def confirm_offline(self, current: str, previous: str, since: Any) -> tuple[bool, str]:
        """Scores both versions on the same labeled rows since ``since``.

        Online quality compares the new version's windows with the previous
        version's *earlier* windows; under concept drift both degrade, and the
        drop says nothing about which model is better. So a rollback must also
        hold on the same recent rows: the previous version must beat the current
        one there by ``rollback_margin`` (accuracy; RMSE relative for regression).
        Too few rows to tell: the online evidence stands.
        """
        from model.features import encode_batch, label_array
        from trainer.data import read_training_window
        from trainer.metrics import evaluate

        policy, task = self.config.retraining, self.config.label.task
        rows = read_training_window(
            self.client, self.bq_project, self.bq_dataset, self.config, start=since
        )
        if len(rows) < policy.quality_min_examples:
            return True, f"only {len(rows)} labeled rows since promotion: online evidence stands"
        x, y = encode_batch(rows, self.config), label_array(rows, self.config)
        cur = evaluate(self.registry.load_keras(current), x, y, task)
        prev = evaluate(self.registry.load_keras(previous), x, y, task)
        if task == "binary_classification":
            worse = prev["accuracy"] - cur["accuracy"] > policy.rollback_margin
            facts = f"accuracy {cur['accuracy']:.4f} vs previous {prev['accuracy']:.4f}"
        else:
            worse = cur["rmse"] > prev["rmse"] * (1 + policy.rollback_margin)
            facts = f"rmse {cur['rmse']:.4f} vs previous {prev['rmse']:.4f}"
        return worse, f"on the same {len(rows)} recent labeled rows: {facts}"

    def check_once(self) -> bool:
        """Judges the current version against the previous one; returns whether it rolled back."""
        from model.registry import CurrentChanged

        pointer = self.registry.current_pointer()
        if pointer is None:
            return False
        current = str(pointer["version"])
        self.stats["current_version"] = current
        previous = pointer.get("previous")
        if not previous:
            self._note(current, "no previous version to compare with")
            return False
        last_event = next(
            (e for e in reversed(self.registry.history()) if e.get("version") == current), None
        )
        if last_event is not None and last_event.get("action") == "rollback":
            self._note(current, "became current by a rollback; not judged")
            return False
        info = self.registry.get(current)
        prev_info = self.registry.get(previous)
        if prev_info.status in ("rejected", "rolled-back"):
            self._note(current, f"previous version {previous} is {prev_info.status}")
            return False
        since = info.metadata.get("promoted_at") or pointer.get("updated_at")
        rows = quality_rows(
            self.client,
            self.bq_project,
            self.bq_dataset,
            self.config,
            [current, previous],
            self.lookback_days,
        )
        cur_q = summarize_quality([r for r in rows if r["model_version"] == current], since=since)
        prev_q = summarize_quality(
            [r for r in rows if r["model_version"] == previous], last_windows=self.baseline_windows
        )
        decision, reason = should_roll_back(
            cur_q, prev_q, self.config.retraining, self.config.label.task
        )
        self._note(current, reason)
        if not decision:
            return False
        confirmed, offline = self.confirm_offline(current, previous, since)
        if not confirmed:
            self._note(current, f"online drop not confirmed offline, kept: {offline}")
            return False
        reason = f"{reason}; {offline}"
        text = f"automatic rollback: {reason}"
        try:
            self.registry.rollback(to_version=previous, reason=text, if_current=current)
        except CurrentChanged as e:
            self.stats["rollbacks_skipped"] += 1
            logger.warning(
                "rollback of %s skipped: CURRENT changed while it was judged (%s)", current, e
            )
            self._note(current, f"rollback skipped: CURRENT changed meanwhile ({e})")
            return False
        self.stats["rollbacks"] += 1
        self.stats["last_rollback"] = {
            "from": current,
            "to": previous,
            "reason": reason,
            "at": _now_iso(),
        }
        logger.warning("rolled back %s -> %s: %s", current, previous, reason)
        try:
            self._record_rollback(info, current, text, cur_q, prev_q)
        except Exception:
            logger.exception(
                "rollback of %s done, but recording it in training_runs failed", current
            )
            self.stats["errors"] += 1
        return True

    def _record_rollback(self, info, version: str, text: str, cur_q, prev_q) -> None:
        meta = info.metadata
        if meta.get("run_id") and meta.get("trigger_id"):  # trainer.task writes both
            produced_by = {"run_id": meta["run_id"], "trigger_id": meta["trigger_id"]}
        else:
            produced_by = runs.run_for_version(
                self.client,
                self.bq_project,
                self.bq_dataset,
                self.config,
                version,
                self.lookback_days,
            )
        if produced_by is None:
            logger.info("no training run names version %s; rollback only logged", version)
            return
        runs.record_run_status(
            self.client,
            runs.runs_table(self.bq_project, self.bq_dataset, self.config),
            {
                "run_id": produced_by["run_id"],
                "trigger_id": produced_by["trigger_id"],
                "dataset": self.config.name,
                "backend": meta.get("backend"),
                "status": runs.ROLLED_BACK,
                "reason": text[:1000],
                "model_version": version,
                "promoted": False,
                "metrics": json.dumps({"online": cur_q, "previous_online": prev_q}),
            },
        )


# ---------------------------------------------------------------- its own process


def run_forever(
    monitor: RollbackMonitor,
    every_seconds: float,
    duration: float | None = None,
    stats_file: str | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """Checks every ``every_seconds`` until ``should_stop()`` or ``duration``; returns stats."""
    deadline = None if duration is None else time.monotonic() + duration
    while not should_stop():
        t0 = time.monotonic()
        try:
            monitor.check_once()
        except Exception:
            logger.exception("monitor check failed")
            monitor.stats["errors"] += 1
        if stats_file:
            path = Path(stats_file)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps({**monitor.stats, "updated_at": _now_iso()}, default=str))
            tmp.replace(path)
        end = t0 + every_seconds if deadline is None else min(t0 + every_seconds, deadline)
        while not should_stop() and time.monotonic() < end:
            time.sleep(min(0.5, max(0.0, end - time.monotonic())))
        if deadline is not None and time.monotonic() >= deadline:
            break
    return dict(monitor.stats)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    p = argparse.ArgumentParser(
        prog="python -m trainer.rollback_monitor",
        description="Roll back a new model version that does worse online than the previous one.",
    )
    p.add_argument("--project", required=True)
    p.add_argument("--config", required=True, help="dataset config YAML/JSON")
    p.add_argument("--bq_dataset", required=True)
    p.add_argument("--bq_project", help="project of the BigQuery dataset (default --project)")
    p.add_argument("--registry", required=True, help="model registry root (dir or gs://)")
    p.add_argument("--monitor-seconds", type=float, default=15.0)
    p.add_argument("--baseline-windows", type=int, default=10)
    p.add_argument("--lookback-days", type=float, default=runs.DEFAULT_LOOKBACK_DAYS)
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--stats-file", help="JSON stats, rewritten after every check")
    args = p.parse_args(argv)
    try:
        config = load_config(args.config)
        if args.monitor_seconds <= 0 or args.lookback_days <= 0:
            raise ValueError("--monitor-seconds and --lookback-days must be positive")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from dataset.resources import bigquery_client
    from model.registry import ModelRegistry

    bq_project = args.bq_project or args.project
    monitor = RollbackMonitor(
        config,
        ModelRegistry(args.registry),
        bigquery_client(bq_project),
        bq_project,
        args.bq_dataset,
        baseline_windows=args.baseline_windows,
        lookback_days=args.lookback_days,
    )
    stop = {"now": False}

    def request_stop(signum, frame) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    stats = run_forever(
        monitor, args.monitor_seconds, args.duration, args.stats_file, lambda: stop["now"]
    )
    print(json.dumps(stats, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
