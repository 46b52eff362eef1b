"""What the dashboard shows, read from BigQuery and the model registry (nothing else).

Each function reads one thing and returns plain JSON-serialisable data; the
page (``dashboard.render``) and ``GET /api/state`` show the same data. Every
query filters on its table's partition column (``dataset.tables.table_layouts``)
with a lookback, so BigQuery prunes old partitions.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from dataset.config import DatasetConfig
from trainer import runs

API_TIMEOUT_SECONDS = 20.0
DEFAULT_LOOKBACK_DAYS = 7.0
REASON_CHARS = 80


@dataclasses.dataclass(frozen=True)
class Source:
    """Where the dashboard reads: a BigQuery client, project, dataset and the config."""

    client: Any
    project: str
    dataset: str
    config: DatasetConfig
    lookback_days: float = DEFAULT_LOOKBACK_DAYS

    def table(self, name: str) -> str:
        return f"{self.project}.{self.dataset}.{name}"

    def since(self) -> dt.datetime:
        return runs.lookback_start(self.lookback_days)

    def query(self, sql: str, params: Sequence[tuple[str, str, Any]] = ()) -> list[dict]:
        return runs.query_rows(self.client, sql, params)


def _json(value: Any) -> Any:
    """A JSON column (metrics, gate decisions) parsed; other values unchanged."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _plain(row: Mapping[str, Any]) -> dict[str, Any]:
    """A BigQuery row with datetimes as RFC 3339 strings."""
    out = {}
    for key, value in row.items():
        if isinstance(value, dt.datetime):
            value = value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
        out[key] = value
    return out


# ------------------------------------------------------------------ pipeline counts


def pipeline_counts(src: Source) -> dict[str, int | None]:
    """Rows per pipeline table (one query); None for a table that does not exist."""
    from google.api_core.exceptions import NotFound

    names = list(dataclasses.asdict(src.config.tables).values())
    try:
        existing = {
            t.table_id
            for t in src.client.list_tables(
                f"{src.project}.{src.dataset}", timeout=API_TIMEOUT_SECONDS
            )
        }
    except NotFound:
        existing = set()
    counts: dict[str, int | None] = dict.fromkeys(names)
    present = [n for n in names if n in existing]
    if present:
        sql = " UNION ALL ".join(
            f"SELECT '{n}' AS t, COUNT(*) AS n FROM `{src.table(n)}`" for n in present
        )
        for row in src.query(sql):
            counts[row["t"]] = int(row["n"])
    return counts


# ------------------------------------------------------------------ model versions


def model_versions(registry) -> dict[str, Any]:
    """The registry's versions (newest first) with status, metrics and gate decisions.

    Returns:
        ``{"current": version or None, "versions": [...], "history": [...]}``;
        each version has ``version``, ``status``, ``created_at``, ``current``,
        ``metrics``, ``reasons`` (the gate decisions recorded by the trainer),
        ``run_id``, ``trigger_id``, ``data_validation`` and ``training_data``.
    """
    current = registry.current_version()
    versions = []
    for info in reversed(registry.versions()):
        meta = info.metadata
        versions.append(
            {
                "version": info.version,
                "status": info.status,
                "created_at": info.created_at,
                "current": info.version == current,
                "metrics": info.metrics,
                "reasons": list(meta.get("reasons") or []),
                "run_id": meta.get("run_id"),
                "trigger_id": meta.get("trigger_id"),
                "parent_version": meta.get("parent_version"),
                "data_validation": meta.get("data_validation"),
                "training_data": meta.get("training_data"),
                "statistics": meta.get("statistics"),
            }
        )
    history = list(reversed(registry.history()))[:20]
    return {"current": current, "versions": versions, "history": history}


def rollback_targets(versions: Iterable[Mapping[str, Any]]) -> list[str]:
    """Versions the rollback button may offer: complete, not current, not rejected."""
    return [v["version"] for v in versions if not v["current"] and v["status"] not in ("rejected",)]


# ------------------------------------------------------------------ training runs


def training_runs(src: Source, limit: int = 30) -> list[dict[str, Any]]:
    """The newest row of each training run (newest first), with its data-validation rows.

    Each run has the ``training_runs`` columns of its newest row (``metrics`` and
    ``gate_decisions`` parsed from JSON; ``reason``: the outcome's),
    ``trigger_reason`` (the trigger's, from the launcher's ``queued`` row) and
    ``quarantine``: the run's ``data_quarantine`` rows (the data-validation
    anomalies that blocked it).
    """
    rows = runs.latest_run_statuses(
        src.client, src.project, src.dataset, src.config, lookback_days=src.lookback_days
    )
    rows = sorted(rows, key=lambda r: r["recorded_at"], reverse=True)[:limit]
    quarantine: dict[str, list[dict]] = defaultdict(list)
    trigger_reasons: dict[str, str] = {}
    if rows:
        # The launcher's queued row carries the trigger's reason; later rows the outcome's.
        for q in src.query(
            f"SELECT run_id, reason FROM `{runs.runs_table(src.project, src.dataset, src.config)}` "
            "WHERE recorded_at >= @since AND status = 'queued'",
            [("since", "TIMESTAMP", src.since())],
        ):
            trigger_reasons[q["run_id"]] = q["reason"]
        table = src.table(src.config.tables.data_quarantine)
        for q in src.query(
            f"SELECT * FROM `{table}` WHERE quarantined_at >= @since ORDER BY quarantined_at DESC "
            "LIMIT 500",
            [("since", "TIMESTAMP", src.since())],
        ):
            quarantine[q["run_id"]].append(_plain(q))
    out = []
    for row in rows:
        plain = _plain(row)
        plain["metrics"] = _json(plain.get("metrics"))
        plain["gate_decisions"] = _json(plain.get("gate_decisions"))
        plain["quarantine"] = quarantine.get(row["run_id"], [])
        plain["trigger_reason"] = trigger_reasons.get(row["run_id"])
        out.append(plain)
    return out


# ------------------------------------------------------------------ online quality


def quality_metric(config: DatasetConfig) -> str:
    """The ``prediction_quality`` column plotted: accuracy, or RMSE for regression."""
    return "accuracy" if config.label.task == "binary_classification" else "rmse"


def quality_series(src: Source) -> dict[str, list[dict[str, Any]]]:
    """Online quality per model version over time: ``{version: [{t, value, examples}]}``.

    One point per (window, version): its newest pane (highest ``pane_index``),
    at the window's end, oldest first.
    """
    metric = quality_metric(src.config)
    table = src.table(src.config.tables.prediction_quality)
    rows = src.query(
        f"SELECT window_end, model_version, examples, {metric} AS value FROM ("
        "SELECT *, ROW_NUMBER() OVER (PARTITION BY window_start, window_end, model_version "
        "ORDER BY IFNULL(pane_index, 0) DESC, computed_at DESC) AS _rn "
        f"FROM `{table}` WHERE window_start >= @since) WHERE _rn = 1 "
        "ORDER BY window_end LIMIT 5000",
        [("since", "TIMESTAMP", src.since())],
    )
    return series_by_version(rows)


def series_by_version(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Quality rows (``window_end``, ``model_version``, ``examples``, ``value``) by version."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row.get("value") is None:
            continue
        t = row["window_end"]
        seconds = t.timestamp() if isinstance(t, dt.datetime) else float(t)
        out[str(row["model_version"])].append(
            {"t": seconds, "value": float(row["value"]), "examples": int(row["examples"] or 0)}
        )
    for points in out.values():
        points.sort(key=lambda p: p["t"])
    return dict(out)


# ------------------------------------------------------------------ dead letters

_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"|\[[^\]]*\]|\d+(\.\d+)?")


def dead_letter_reason(message: str | None) -> str:
    """A dead-letter error message reduced to its reason: values and names blanked.

    ``"feature 'speed': expected float, got str 'x'"`` and the same error on
    another feature share the reason ``"feature …: expected float, got str …"``.
    """
    if not message:
        return "(no message)"
    first = message.strip().splitlines()[0]
    reduced = _QUOTED.sub("…", first)
    return reduced[:REASON_CHARS]


def dead_letters(src: Source, examples: int = 10) -> dict[str, Any]:
    """Dead-letter counts by step and reason, and the newest rows.

    Returns:
        ``{"by_step_reason": [{"step", "reason", "count"}], "recent": [...]}``,
        counts largest first; recent rows have ``timestamp``, ``step``,
        ``errorMessage``, ``messageId`` and ``payload`` (truncated).
    """
    table = src.table(src.config.tables.dead_letter)
    since = [("since", "TIMESTAMP", src.since())]
    grouped = src.query(
        f"SELECT step, errorMessage AS message, COUNT(*) AS n FROM `{table}` "
        "WHERE timestamp >= @since GROUP BY step, errorMessage ORDER BY n DESC LIMIT 1000",
        since,
    )
    recent = src.query(
        f"SELECT timestamp, step, errorMessage, messageId, payloadString FROM `{table}` "
        f"WHERE timestamp >= @since ORDER BY timestamp DESC LIMIT {int(examples)}",
        since,
    )
    return {
        "by_step_reason": count_by_reason(grouped),
        "recent": [
            {
                **_plain({k: v for k, v in r.items() if k != "payloadString"}),
                "payload": (r.get("payloadString") or "")[:300],
            }
            for r in recent
        ],
    }


def count_by_reason(grouped: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``(step, message, n)`` rows summed by ``(step, dead_letter_reason(message))``."""
    counts: Counter[tuple[str, str]] = Counter()
    for row in grouped:
        counts[(row.get("step") or "(none)", dead_letter_reason(row.get("message")))] += int(
            row["n"]
        )
    return [
        {"step": step, "reason": reason, "count": n}
        for (step, reason), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    ]


# ------------------------------------------------------------------ triggers


def recent_triggers(src: Source, limit: int = 20) -> list[dict[str, Any]]:
    """The newest retrain triggers (pipeline, dashboard and file trigger), newest first."""
    table = src.table(src.config.tables.retrain_triggers)
    rows = src.query(
        f"SELECT * FROM `{table}` WHERE created_at >= @since "
        f"ORDER BY created_at DESC LIMIT {int(limit)}",
        [("since", "TIMESTAMP", src.since())],
    )
    return [_plain(r) for r in rows]


# ------------------------------------------------------------------ everything


def collect_state(src: Source, registry) -> dict[str, Any]:
    """Everything the page shows; a section that fails carries ``{"error": ...}``."""
    sections = {
        "counts": lambda: pipeline_counts(src),
        "models": lambda: model_versions(registry),
        "runs": lambda: training_runs(src),
        "quality": lambda: quality_series(src),
        "dead_letters": lambda: dead_letters(src),
        "triggers": lambda: recent_triggers(src),
    }
    state: dict[str, Any] = {
        "dataset": src.config.name,
        "project": src.project,
        "bq_dataset": src.dataset,
        "quality_metric": quality_metric(src.config),
        "errors": {},
    }
    for name, read in sections.items():
        try:
            state[name] = read()
        except Exception as e:  # one failing table must not blank the whole page
            state[name] = None
            state["errors"][name] = f"{type(e).__name__}: {e}"[:500]
    return state
