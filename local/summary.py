"""Run summary of a local (or cloud) streaming run: what was sent, what landed.

Combines the simulator's stats file (what the publisher sent) with row counts
of the BigQuery tables (what the pipeline wrote) and checks that every
malformed message the publisher sent shows up in the dead-letter table.

The summary is a flat JSON object; each group of keys comes from one
*collector* function registered with ``@collector`` (in order). To report
something new (predictions, triggers, training runs, model versions), add a
collector that reads ``ctx`` and returns a dict of new keys::

    @collector
    def predictions(ctx: SummaryContext) -> dict[str, Any]:
        return {"prediction_rows": ctx.table_counts.get("predictions")}

CLI (prints one JSON object on one line)::

    python -m local.summary --project local-project --bq_dataset traffic_local \\
        --config configs/traffic.yaml --stats-file .local/run/publisher-stats.json --json

``--progress`` prints a one-line human progress report instead, and
``--wait-drained SECONDS`` polls until the pipeline has caught up (see
``local.drain.wait_drained``).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from google.cloud import bigquery

from dataset.config import DatasetConfig, load_config
from dataset.resources import bigquery_client
from dataset.tables import table_schemas
from dataset.times import to_datetime
from local.drain import quality_window_expired, wait_drained

logger = logging.getLogger(__name__)

QUERY_TIMEOUT_SECONDS = 20.0
_RETRY = bigquery.DEFAULT_RETRY.with_deadline(QUERY_TIMEOUT_SECONDS)

STATS_KEYS = (
    "events_published",
    "valid_published",
    "messages_sent",
    "duplicates_published",
    "malformed_published",
    "late_published",
)


@dataclasses.dataclass
class SummaryContext:
    """Everything collectors may use. Fields are filled before collectors run."""

    project: str
    dataset: str
    config: DatasetConfig | None
    stats: dict[str, Any]
    client: bigquery.Client | None
    table_counts: dict[str, int | None]
    started_at: float | None = None
    duration_seconds: float | None = None
    errors: list[str] = dataclasses.field(default_factory=list)
    ids_file: str | os.PathLike[str] | None = None

    def table_id(self, table: str) -> str:
        """Fully qualified ``project.dataset.table`` for use in SQL."""
        return f"{self.project}.{self.dataset}.{table}"

    def query_rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Runs a query with bounded retries and returns its rows."""
        if self.client is None:
            raise RuntimeError("no BigQuery client")
        job = self.client.query(
            sql,
            job_config=bigquery.QueryJobConfig(query_parameters=list(params)),
            retry=_RETRY,
            timeout=QUERY_TIMEOUT_SECONDS,
        )
        return list(job.result(retry=_RETRY, timeout=QUERY_TIMEOUT_SECONDS))

    def query_scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Runs a query with bounded retries and returns the first cell."""
        rows = self.query_rows(sql, params)
        return rows[0][0] if rows else None


Collector = Callable[[SummaryContext], Mapping[str, Any]]
COLLECTORS: list[Collector] = []


def collector(fn: Collector) -> Collector:
    """Registers a collector; its keys appear in the summary in registration order."""
    COLLECTORS.append(fn)
    return fn


# --------------------------------------------------------------------------- inputs


def read_stats(path: str | os.PathLike[str] | None, attempts: int = 5) -> dict[str, Any]:
    """Reads the publisher's JSON stats file; ``{}`` if there is none yet.

    The simulator rewrites the file every few seconds, so a half-written file
    is retried a few times before giving up.

    Raises:
        ValueError: if the file stays unparseable.
    """
    if path is None:
        return {}
    p = Path(path)
    last_error: Exception | None = None
    for _ in range(attempts):
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (ValueError, OSError) as e:
            last_error = e
            time.sleep(0.2)
            continue
        if not isinstance(data, dict):
            raise ValueError(f"stats file {p}: expected a JSON object, got {type(data).__name__}")
        return data
    raise ValueError(f"stats file {p} is not valid JSON: {last_error}")


def _emulator_unreachable() -> str | None:
    """A message if BIGQUERY_EMULATOR_HOST is set but nothing answers there."""
    host = os.environ.get("BIGQUERY_EMULATOR_HOST")
    if not host:
        return None
    from local.emulators import healthy_from_env

    if healthy_from_env({"BIGQUERY_EMULATOR_HOST": host}).get("bigquery-emulator"):
        return None
    return f"BigQuery emulator at {host} is not answering"


def count_rows(
    client: bigquery.Client, project: str, dataset: str, tables: Sequence[str]
) -> dict[str, int | None]:
    """COUNT(*) of each table that exists (one query); None for missing tables.

    Also counts tables of the dataset that are not in ``tables``.
    """
    from google.api_core.exceptions import NotFound

    try:
        existing = [
            t.table_id
            for t in client.list_tables(
                f"{project}.{dataset}", retry=_RETRY, timeout=QUERY_TIMEOUT_SECONDS
            )
        ]
    except NotFound:
        existing = []
    names = list(dict.fromkeys([*tables, *sorted(existing)]))
    counts: dict[str, int | None] = {name: None for name in names}
    present = [n for n in names if n in existing]
    if present:
        sql = " UNION ALL ".join(
            f"SELECT '{n}' AS t, COUNT(*) AS n FROM `{project}.{dataset}.{n}`" for n in present
        )
        job = client.query(sql, retry=_RETRY, timeout=QUERY_TIMEOUT_SECONDS)
        for row in job.result(retry=_RETRY, timeout=QUERY_TIMEOUT_SECONDS):
            counts[row["t"]] = int(row["n"])
    return counts


# --------------------------------------------------------------------------- collectors


@collector
def publisher_stats(ctx: SummaryContext) -> dict[str, Any]:
    """What the simulator says it sent."""
    out: dict[str, Any] = {key: ctx.stats.get(key) for key in STATS_KEYS}
    if "running" in ctx.stats:
        out["publisher_running"] = ctx.stats["running"]
    return out


@collector
def table_rows(ctx: SummaryContext) -> dict[str, Any]:
    """Rows in the pipeline's tables (None: table missing or not countable)."""
    names = ctx.config.tables if ctx.config else None
    get = ctx.table_counts.get
    return {
        "dead_letters": get(names.dead_letter) if names else get("dead_letter"),
        "aggregate_rows": get(names.aggregates) if names else get("aggregates"),
        "training_rows": get(names.training_examples) if names else get("training_examples"),
    }


@collector
def malformed_ids_count(ctx: SummaryContext) -> dict[str, Any]:
    """How many distinct malformed message ids the publisher listed."""
    ids = ctx.stats.get("malformed_ids")
    return {"malformed_ids_count": None if ids is None else len(set(map(str, ids)))}


@collector
def malformed_matching(ctx: SummaryContext) -> dict[str, Any]:
    """How many of the publisher's malformed message ids reached the dead-letter table."""
    ids = [str(i) for i in ctx.stats.get("malformed_ids") or []]
    table = ctx.config.tables.dead_letter if ctx.config else "dead_letter"
    if not ids:
        return {"malformed_dead_lettered": 0 if "malformed_ids" in ctx.stats else None}
    if ctx.table_counts.get(table) is None:
        return {"malformed_dead_lettered": None}
    found = ctx.query_scalar(
        f"SELECT COUNT(DISTINCT messageId) FROM `{ctx.table_id(table)}` "
        "WHERE messageId IN UNNEST(@ids)",
        [bigquery.ArrayQueryParameter("ids", "STRING", sorted(set(ids)))],
    )
    return {"malformed_dead_lettered": int(found or 0)}


@collector
def reconciliation(ctx: SummaryContext) -> dict[str, Any]:
    """Where every published message id ended up (``local.reconcile``).

    ``unaccounted`` is None without an ids file or tables to look in.
    """
    out: dict[str, Any] = {"unaccounted": None}
    if ctx.ids_file is None or ctx.config is None or ctx.client is None:
        return out
    from local.reconcile import read_ids, reconcile_tables

    result = reconcile_tables(
        ctx.client,
        ctx.project,
        ctx.dataset,
        ctx.config,
        read_ids(ctx.ids_file),
        ctx.stats.get("duplicates_published"),
    )
    result.pop("duplicates_published")
    return {"unaccounted": result.pop("unaccounted"), **result}


@collector
def predictions(ctx: SummaryContext) -> dict[str, Any]:
    """Predictions per model version and online quality (progressive validation)."""
    if ctx.config is None:
        return {}
    t = ctx.config.tables
    out: dict[str, Any] = {
        "predictions": ctx.table_counts.get(t.predictions),
        "predictions_by_model_version": None,
        "quality_rows": ctx.table_counts.get(t.prediction_quality),
        "accuracy_by_model_version": None,
        "quality_caught_up": None,
    }
    if ctx.client is None or not out["predictions"]:
        return out
    rows = ctx.query_rows(
        f"SELECT model_version, COUNT(*) AS n FROM `{ctx.table_id(t.predictions)}` "
        "GROUP BY model_version ORDER BY model_version"
    )
    out["predictions_by_model_version"] = {r["model_version"]: int(r["n"]) for r in rows}
    if out["quality_rows"]:
        rows = ctx.query_rows(
            "SELECT model_version, SUM(accuracy * examples) / SUM(examples) AS accuracy, "
            f"SUM(examples) AS scored FROM `{ctx.table_id(t.prediction_quality)}` "
            "WHERE pane_timing = 'ON_TIME' AND accuracy IS NOT NULL "
            "GROUP BY model_version ORDER BY model_version"
        )
        out["accuracy_by_model_version"] = {
            r["model_version"]: round(float(r["accuracy"]), 4) for r in rows if r["scored"]
        }
    if ctx.config.label.source == "inline":
        # Inline labels are scored at once, so quality has caught up when the
        # evaluation window holding the newest prediction has fired a pane. A
        # LATE pane counts: a pipeline behind the local runner's wall-clock
        # watermark scores its newest windows only in LATE panes.
        last_prediction = ctx.query_scalar(
            f"SELECT MAX(event_time) FROM `{ctx.table_id(t.predictions)}`"
        )
        last_window_end = ctx.query_scalar(
            f"SELECT MAX(window_end) FROM `{ctx.table_id(t.prediction_quality)}` "
            "WHERE pane_timing IN ('ON_TIME', 'LATE')"
        )
        out["quality_caught_up"] = bool(
            last_prediction is not None
            and last_window_end is not None
            and last_window_end > last_prediction
        )
        if not out["quality_caught_up"] and last_prediction is not None:
            out["quality_window_expired"] = quality_window_expired(
                to_datetime(last_prediction).timestamp(),
                ctx.config.evaluation_window_seconds,
                time.time(),
            )
    return out


@collector
def retraining(ctx: SummaryContext) -> dict[str, Any]:
    """Triggers, training runs, and what the registry promoted, rejected, rolled back."""
    if ctx.config is None:
        return {}
    t = ctx.config.tables
    out: dict[str, Any] = {
        "retrain_triggers": ctx.table_counts.get(t.retrain_triggers),
        "training_runs": None,
        "training_runs_by_status": None,
    }
    if ctx.client is not None and ctx.table_counts.get(t.training_runs):
        from trainer.runs import final_statuses

        statuses = final_statuses(
            ctx.query_rows(
                f"SELECT run_id, status, seq, recorded_at FROM `{ctx.table_id(t.training_runs)}`"
            )
        )
        out["training_runs"] = len(statuses)
        out["training_runs_by_status"] = dict(
            sorted(collections.Counter(statuses.values()).items())
        )
    elif ctx.table_counts.get(t.training_runs) == 0:
        out["training_runs"] = 0
    root = os.environ.get("MODEL_REGISTRY")
    if root:
        from model.registry import ModelRegistry

        registry = ModelRegistry(root)
        history = registry.history()
        versions = registry.versions()
        promoted = [h for h in history if h.get("action") == "promote"]
        out.update(
            {
                "model_versions": len(versions),
                "model_versions_promoted": len({h.get("version") for h in promoted}),
                "automatic_promotions": sum(
                    1 for h in promoted if str(h.get("reason", "")).startswith("run ")
                ),
                "models_rejected": sum(1 for v in versions if v.status == "rejected"),
                "rollbacks": sum(1 for h in history if h.get("action") == "rollback"),
                "current_model_version": registry.current_version(),
            }
        )
    launcher_stats = os.environ.get("LAUNCHER_STATS_FILE")
    if launcher_stats:
        out["launcher"] = read_stats(launcher_stats) or None
    return out


@collector
def all_tables(ctx: SummaryContext) -> dict[str, Any]:
    """Row count of every table (config tables first, then any other table)."""
    return {"tables": dict(ctx.table_counts)}


@collector
def timing(ctx: SummaryContext) -> dict[str, Any]:
    """Wall-clock duration of the run, when known."""
    duration = ctx.duration_seconds
    if duration is None and ctx.started_at is not None:
        duration = time.time() - ctx.started_at
    if duration is None:
        for key in ("duration_seconds", "elapsed_seconds"):
            if isinstance(ctx.stats.get(key), int | float):
                duration = float(ctx.stats[key])
                break
    return {"duration_seconds": None if duration is None else round(duration, 1)}


# --------------------------------------------------------------------------- building


def build_summary(
    project: str,
    dataset: str,
    config: DatasetConfig | None = None,
    stats_file: str | os.PathLike[str] | None = None,
    client: bigquery.Client | None = None,
    started_at: float | None = None,
    duration_seconds: float | None = None,
    extra: Mapping[str, Any] | None = None,
    query_bigquery: bool = True,
    ids_file: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Builds the summary dict. Never raises for unreachable services or bad input
    files: problems are listed under ``"errors"`` and affected values are None.

    Args:
        project: BigQuery project.
        dataset: BigQuery dataset with the pipeline's tables.
        config: Dataset config (for table names); None: default table names.
        stats_file: The simulator's stats file (missing: publisher values are None).
        client: BigQuery client; by default ``bigquery_client(project)``.
        started_at: Epoch seconds when the run started (for ``duration_seconds``).
        duration_seconds: Explicit duration (wins over ``started_at``).
        extra: More keys to add verbatim (e.g. ``{"pipeline_status": "died"}``).
        query_bigquery: False: do not contact BigQuery (table values stay None).
        ids_file: the publisher's ids file (``--ids-file``), for ``unaccounted``.
    """
    errors: list[str] = []
    try:
        stats = read_stats(stats_file)
        if stats_file is not None and not Path(stats_file).exists():
            errors.append(f"stats file {stats_file} not found")
    except ValueError as e:
        stats = {}
        errors.append(str(e))
    table_names = (
        list(table_schemas(config))
        if config
        else ["aggregates", "training_examples", "dead_letter"]
    )
    counts: dict[str, int | None] = {name: None for name in table_names}
    unreachable = None if client is not None else _emulator_unreachable()
    if not query_bigquery:
        errors.append("BigQuery not queried")
    elif unreachable:
        errors.append(unreachable)
    else:
        try:
            client = client or bigquery_client(project)
            counts = count_rows(client, project, dataset, table_names)
        except Exception as e:  # noqa: BLE001 - the summary must always print
            errors.append(f"counting rows in {project}.{dataset}: {type(e).__name__}: {e}")
            client = None
    ctx = SummaryContext(
        project=project,
        dataset=dataset,
        config=config,
        stats=stats,
        client=client,
        table_counts=counts,
        started_at=started_at,
        duration_seconds=duration_seconds,
        errors=errors,
        ids_file=ids_file,
    )
    summary: dict[str, Any] = {}
    for fn in COLLECTORS:
        try:
            summary.update(fn(ctx))
        except Exception as e:  # noqa: BLE001 - one failing collector must not hide the rest
            errors.append(f"{fn.__name__}: {type(e).__name__}: {e}")
    summary.update(extra or {})
    summary.update(completion(summary))
    summary["errors"] = errors
    return summary


def completion(summary: Mapping[str, Any]) -> dict[str, Any]:
    """``events_not_processed`` and, for a run that says ``completed``, whether it was.

    A run whose published events did not all land (``unaccounted`` > 0) or that
    did not drain is ``incomplete``: the pipeline did not keep up (or lost them).
    """
    out: dict[str, Any] = {"events_not_processed": summary.get("unaccounted")}
    if summary.get("run_status") != "completed":
        return out
    unaccounted = summary.get("unaccounted")
    reasons = []
    if unaccounted:
        reasons.append(f"{unaccounted} published events never reached any table")
    if summary.get("drained") is False:
        reasons.append("the pipeline did not drain in time")
    if reasons:
        out["run_status"] = "incomplete"
        out["incomplete_reason"] = "; ".join(reasons)
    return out


def _num(value: Any) -> str:
    return "-" if value is None else str(value)


def progress_line(summary: Mapping[str, Any], elapsed_seconds: float | None = None) -> str:
    """One human-readable line: what was published, rows per table, dead letters."""
    head = f"[{elapsed_seconds:5.0f}s] " if elapsed_seconds is not None else ""
    published = (
        f"published {_num(summary.get('events_published'))} events "
        f"(sent {_num(summary.get('messages_sent'))}, "
        f"malformed {_num(summary.get('malformed_published'))}, "
        f"duplicates {_num(summary.get('duplicates_published'))}, "
        f"late {_num(summary.get('late_published'))})"
    )
    tables = summary.get("tables") or {}
    rows = " ".join(f"{name}={_num(n)}" for name, n in tables.items()) or "-"
    dead = (
        f"dead letters {_num(summary.get('dead_letters'))} "
        f"(malformed matched {_num(summary.get('malformed_dead_lettered'))}"
        f"/{_num(summary.get('malformed_published'))}) | "
        f"unaccounted {_num(summary.get('unaccounted'))}"
    )
    line = f"{head}{published} | rows: {rows} | {dead}"
    if summary.get("errors"):
        line += " | " + "; ".join(summary["errors"])
    return line


# --------------------------------------------------------------------------- CLI


def _parse_field(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m local.summary", description="Print the run summary as one JSON line."
    )
    parser.add_argument("--project", required=True)
    parser.add_argument("--bq_dataset", required=True)
    parser.add_argument("--bq_project", help="project of the dataset (default: --project)")
    parser.add_argument("--config", help="dataset config (for table names)")
    parser.add_argument("--stats-file", help="the simulator's JSON stats file")
    parser.add_argument(
        "--ids-file", help="the simulator's published message ids (for `unaccounted`)"
    )
    parser.add_argument("--started-at", type=float, help="run start, epoch seconds")
    parser.add_argument("--duration-seconds", type=float, help="run duration, if known")
    parser.add_argument(
        "--field",
        action="append",
        type=_parse_field,
        default=[],
        metavar="KEY=VALUE",
        help="extra key for the summary (VALUE parsed as JSON if it can be)",
    )
    fmt = parser.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one JSON object on one line (default)")
    fmt.add_argument("--pretty", action="store_true", help="indented JSON")
    fmt.add_argument("--progress", action="store_true", help="one human-readable line")
    parser.add_argument(
        "--wait-drained",
        type=float,
        metavar="SECONDS",
        help="poll (printing progress to stderr) until drained, or until SECONDS pass "
        "without progress (no landed-row count grew); exit code 0 if drained, 2 if not",
    )
    parser.add_argument(
        "--drain-max",
        type=float,
        metavar="SECONDS",
        help="with --wait-drained: give up after SECONDS in all, even while the pipeline "
        "still makes progress (default: the --wait-drained allowance)",
    )
    parser.add_argument("--poll-seconds", type=float, default=5.0)
    parser.add_argument(
        "--skip-bigquery",
        action="store_true",
        help="do not contact BigQuery (e.g. the emulator never started)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = _parse_args(argv)
    config = load_config(args.config) if args.config else None
    project = args.bq_project or args.project

    def build() -> dict[str, Any]:
        return build_summary(
            project,
            args.bq_dataset,
            config,
            args.stats_file,
            started_at=args.started_at,
            duration_seconds=args.duration_seconds,
            extra=dict(args.field),
            query_bigquery=not args.skip_bigquery,
            ids_file=args.ids_file,
        )

    code = 0
    if args.wait_drained is not None:
        drained, summary = wait_drained(
            build,
            args.wait_drained,
            args.poll_seconds,
            report=lambda current: print(
                "draining: " + progress_line(current), file=sys.stderr, flush=True
            ),
            max_total_seconds=args.drain_max,
        )
        code = 0 if drained else 2
    else:
        summary = build()
    elapsed = None if args.started_at is None else time.time() - args.started_at
    if args.progress:
        print(progress_line(summary, elapsed), flush=True)
    elif args.pretty:
        print(json.dumps(summary, indent=2, default=str), flush=True)
    else:
        print(json.dumps(summary, separators=(",", ":"), default=str), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
