"""Training-run status rows and quarantine rows in BigQuery: writes and the queries.

``training_runs`` is append-only: one row per status change of a run
(``queued``, ``submitting``, ``running``, ``succeeded``, ``rejected``,
``failed``, later maybe ``rolled_back``); the newest row of a run is its state.
The launcher writes ``queued`` and ``submitting`` (before it submits the job),
the training job (``trainer.task``) writes ``running`` and its outcome.

**Order.** Each row carries ``seq``, a per-run sequence number: a writer
appends ``1 + the run's highest seq`` (``next_seq``). Rows are ordered by
``seq``, then by the life-cycle rank of the status (for two rows given the same
seq by writers that raced), then by ``recorded_at``. Wall clocks of different
hosts never decide the order. ``status_order`` is that order, in Python;
``_LATEST_SQL`` is the same order in SQL: one definition of "latest".

**Partitions.** ``training_runs`` is partitioned by day on ``recorded_at``;
every query here has a lower bound on it (``lookback_days``, default
``DEFAULT_LOOKBACK_DAYS``), so BigQuery prunes older partitions. A run whose
rows are all older than the lookback is not seen.

Rows are checked and coerced against the table schema *before* the insert
(``typed_row``): unknown columns and values of the wrong type raise
``ValueError`` here, because the BigQuery emulator's ``insertAll`` neither
rejects them nor stops retrying. TIMESTAMP values may be datetimes, epoch
seconds or RFC 3339 strings; STRING values that are dicts/lists are JSON
encoded. Inserts have a bounded retry deadline (``API_TIMEOUT_SECONDS``).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from dataset.config import DatasetConfig
from dataset.tables import QUARANTINE_SCHEMA, TRAINING_RUNS_SCHEMA
from dataset.times import rfc3339

API_TIMEOUT_SECONDS = 30.0
STATUSES = ("queued", "submitting", "running", "succeeded", "rejected", "failed", "rolled_back")
TERMINAL_STATUSES = ("succeeded", "rejected", "failed")
ROLLED_BACK = "rolled_back"
DEFAULT_LOOKBACK_DAYS = 30.0
# Second sort key, after seq: the life-cycle rank of a status.
_STATUS_RANK = {
    "queued": 0,
    "submitting": 1,
    "running": 2,
    "succeeded": 3,
    "rejected": 3,
    "failed": 3,
    "rolled_back": 4,
}

Field = Mapping[str, Any]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _timestamp(name: str, value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name}: not a finite time: {value!r}")
    try:
        return rfc3339(value)
    except TypeError as e:
        raise ValueError(
            f"{name}: expected a TIMESTAMP, got {type(value).__name__} {value!r}"
        ) from e
    except ValueError as e:
        raise ValueError(f"{name}: not an RFC 3339 time: {value!r}") from e


def _coerce(name: str, bq_type: str, value: Any) -> Any:
    if bq_type == "STRING":
        if isinstance(value, str):
            return value
        if isinstance(value, (dict, list, tuple)):
            return json.dumps(value, sort_keys=True, default=str)
        raise ValueError(f"{name}: expected a STRING, got {type(value).__name__} {value!r}")
    if bq_type == "INT64":
        if isinstance(value, bool):
            raise ValueError(f"{name}: expected an INT64, got bool {value!r}")
        if hasattr(value, "item") and not isinstance(value, (int, float)):
            value = value.item()  # numpy scalar
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"{name}: expected an INT64, got {type(value).__name__} {value!r}")
    if bq_type == "FLOAT64":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name}: expected a FLOAT64, got {type(value).__name__} {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{name}: FLOAT64 must be finite in JSON, got {value!r}")
        return float(value)
    if bq_type == "BOOL":
        if hasattr(value, "item") and not isinstance(value, bool):
            value = value.item()
        if not isinstance(value, bool):
            raise ValueError(f"{name}: expected a BOOL, got {type(value).__name__} {value!r}")
        return value
    if bq_type == "TIMESTAMP":
        return _timestamp(name, value)
    raise ValueError(f"{name}: unsupported column type {bq_type}")


def typed_row(row: Mapping[str, Any], schema: Sequence[Field]) -> dict[str, Any]:
    """``row`` checked and coerced for ``insert_rows_json`` against a flat schema.

    NULL (None) values of NULLABLE columns are dropped from the row.

    Raises:
        ValueError: for a column not in the schema, a missing REQUIRED value or a
            value of the wrong type (names the column).
    """
    columns = {str(f["name"]): f for f in schema}
    unknown = sorted(set(row) - set(columns))
    if unknown:
        raise ValueError(f"unknown column(s) {', '.join(unknown)} (schema: {', '.join(columns)})")
    out: dict[str, Any] = {}
    for name, field in columns.items():
        value = row.get(name)
        if value is None:
            if str(field.get("mode", "NULLABLE")).upper() == "REQUIRED":
                raise ValueError(f"{name}: a value is required")
            continue
        out[name] = _coerce(name, str(field["type"]).upper(), value)
    return out


def insert_typed_rows(
    client, table: str, rows: Iterable[Mapping[str, Any]], schema: Sequence[Field]
) -> int:
    """Validates ``rows`` against ``schema`` and streams them into ``table``.

    Args:
        client: a ``google.cloud.bigquery.Client``.
        table: ``project.dataset.table``.
        rows: the rows.
        schema: the table's schema (``dataset.tables`` form).

    Returns:
        The number of rows inserted.

    Raises:
        ValueError: for an invalid row (nothing is inserted then).
        RuntimeError: if BigQuery reports insert errors.
    """
    from google.cloud import bigquery

    typed = [typed_row(r, schema) for r in rows]
    if not typed:
        return 0
    errors = client.insert_rows_json(
        table,
        typed,
        row_ids=[uuid.uuid4().hex for _ in typed],
        retry=bigquery.DEFAULT_RETRY.with_deadline(API_TIMEOUT_SECONDS),
        timeout=API_TIMEOUT_SECONDS,
    )
    if errors:
        raise RuntimeError(f"insert into {table} failed: {errors[:3]}")
    return len(typed)


def record_run_status(client, table: str, row: Mapping[str, Any]) -> dict[str, Any]:
    """Appends one status row to the ``training_runs`` table.

    Args:
        client: a ``google.cloud.bigquery.Client``.
        table: ``project.dataset.training_runs`` (use ``runs_table``).
        row: columns of ``TRAINING_RUNS_SCHEMA``; ``run_id``, ``trigger_id`` and
            ``status`` are required, ``recorded_at`` defaults to now and ``seq``
            to ``next_seq`` (one query). ``metrics`` and ``gate_decisions`` may
            be dicts (JSON encoded here).

    Returns:
        The row as inserted.

    Raises:
        ValueError: for an unknown status, an unknown column or a wrongly typed value.
    """
    document = dict(row)
    if document.get("status") not in STATUSES:
        raise ValueError(
            f"status: expected one of {', '.join(STATUSES)}, got {document.get('status')!r}"
        )
    document.setdefault("recorded_at", utcnow())
    typed = typed_row(document, TRAINING_RUNS_SCHEMA)  # check before the seq query
    if document.get("seq") is None:
        typed["seq"] = next_seq(client, table, str(document["run_id"]))
    insert_typed_rows(client, table, [typed], TRAINING_RUNS_SCHEMA)
    return typed


def record_quarantine(client, table: str, rows: Iterable[Mapping[str, Any]]) -> int:
    """Appends rows to the ``data_quarantine`` table (``QUARANTINE_SCHEMA``)."""
    now = utcnow()
    return insert_typed_rows(
        client,
        table,
        [{"quarantined_at": now, **r} for r in rows],
        QUARANTINE_SCHEMA,
    )


def runs_table(project: str, dataset: str, config: DatasetConfig) -> str:
    """``project.dataset.training_runs``."""
    return f"{project}.{dataset}.{config.tables.training_runs}"


def quarantine_table(project: str, dataset: str, config: DatasetConfig) -> str:
    return f"{project}.{dataset}.{config.tables.data_quarantine}"


# ---------------------------------------------------------------- order and queries


def status_order(row: Mapping[str, Any]) -> tuple:
    """The sort key of a status row: ``seq``, then life-cycle rank, then ``recorded_at``.

    Rows without ``seq`` (written before it existed) count as seq 0.
    """
    return (
        int(row.get("seq") or 0),
        _STATUS_RANK.get(row["status"], len(_STATUS_RANK)),
        row.get("recorded_at") or dt.datetime.min.replace(tzinfo=dt.UTC),
    )


_RANK_SQL = (
    "CASE status "
    + " ".join(f"WHEN '{s}' THEN {r}" for s, r in _STATUS_RANK.items())
    + f" ELSE {len(_STATUS_RANK)} END"
)
# The newest row per run, in the order of ``status_order``.
_LATEST_SQL = (
    "SELECT * EXCEPT(_rn) FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY run_id "
    f"ORDER BY IFNULL(seq, 0) DESC, {_RANK_SQL} DESC, recorded_at DESC) AS _rn "
    "FROM `{table}` WHERE recorded_at >= @since AND {where}) WHERE _rn = 1"
)


def lookback_start(lookback_days: float = DEFAULT_LOOKBACK_DAYS) -> dt.datetime:
    """The lower bound of partition-pruned queries: now minus ``lookback_days``."""
    if not lookback_days > 0:
        raise ValueError(f"lookback_days must be positive, got {lookback_days}")
    return utcnow() - dt.timedelta(days=lookback_days)


def query_rows(client, sql: str, params: Sequence[tuple[str, str, Any]] = ()) -> list[dict]:
    """Runs a parameterized query; ``params`` are ``(name, type, value)``."""
    from google.cloud import bigquery

    job_config = bigquery.QueryJobConfig(
        query_parameters=[bigquery.ScalarQueryParameter(n, t, v) for n, t, v in params]
    )
    job = client.query(sql, job_config=job_config, timeout=API_TIMEOUT_SECONDS)
    return [dict(row) for row in job.result(timeout=API_TIMEOUT_SECONDS)]


def next_seq(client, table: str, run_id: str, lookback_days: float = DEFAULT_LOOKBACK_DAYS) -> int:
    """1 + the highest ``seq`` recorded for ``run_id`` (1 for a new run)."""
    rows = query_rows(
        client,
        f"SELECT MAX(seq) AS seq FROM `{table}` WHERE recorded_at >= @since AND run_id = @run_id",
        [("since", "TIMESTAMP", lookback_start(lookback_days)), ("run_id", "STRING", run_id)],
    )
    return int((rows[0].get("seq") if rows else None) or 0) + 1


def final_statuses(rows: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Each run's newest status, from status rows with ``run_id``, ``status``, ``seq``.

    The newest by ``status_order``: the table is append-only (queued,
    submitting, running, then a terminal status, maybe ``rolled_back`` later).
    """
    latest: dict[str, Mapping[str, Any]] = {}
    for row in rows:
        seen = latest.get(row["run_id"])
        if seen is None or status_order(row) >= status_order(seen):
            latest[row["run_id"]] = row
    return {run_id: row["status"] for run_id, row in latest.items()}


def run_history(
    client,
    project: str,
    dataset: str,
    config: DatasetConfig,
    run_id: str,
    lookback_days: float = DEFAULT_LOOKBACK_DAYS,
) -> list[dict[str, Any]]:
    """Every status row of one run, oldest first (TIMESTAMPs as datetimes)."""
    table = runs_table(project, dataset, config)
    rows = query_rows(
        client,
        f"SELECT * FROM `{table}` WHERE recorded_at >= @since AND run_id = @run_id",
        [("since", "TIMESTAMP", lookback_start(lookback_days)), ("run_id", "STRING", run_id)],
    )
    return sorted(rows, key=status_order)


def latest_run_statuses(
    client,
    project: str,
    dataset: str,
    config: DatasetConfig,
    statuses: Sequence[str] = (),
    lookback_days: float = DEFAULT_LOOKBACK_DAYS,
) -> list[dict[str, Any]]:
    """The newest row of every run of this dataset, optionally only those in ``statuses``.

    Ordered by ``recorded_at`` of that row.
    """
    sql = _LATEST_SQL.format(table=runs_table(project, dataset, config), where="dataset = @dataset")
    params = [
        ("since", "TIMESTAMP", lookback_start(lookback_days)),
        ("dataset", "STRING", config.name),
    ]
    rows = query_rows(client, sql, params)
    if statuses:
        rows = [r for r in rows if r["status"] in statuses]
    return sorted(rows, key=lambda r: r["recorded_at"])


def _newest_row(
    client, table: str, where: str, param: tuple[str, str, Any], lookback_days: float
) -> dict[str, Any] | None:
    """The newest row (``status_order``) of ``table`` matching ``where`` in the lookback."""
    rows = query_rows(
        client,
        f"SELECT * FROM `{table}` WHERE recorded_at >= @since AND {where}",
        [("since", "TIMESTAMP", lookback_start(lookback_days)), param],
    )
    return max(rows, key=status_order) if rows else None


def latest_run_status(
    client,
    project: str,
    dataset: str,
    config: DatasetConfig,
    trigger_id: str,
    lookback_days: float = DEFAULT_LOOKBACK_DAYS,
) -> dict[str, Any] | None:
    """The newest status row recorded for ``trigger_id`` (by ``status_order``), or None.

    TIMESTAMP columns come back as UTC datetimes; ``metrics`` and
    ``gate_decisions`` are JSON strings as stored.
    """
    table = runs_table(project, dataset, config)
    param = ("trigger_id", "STRING", trigger_id)
    return _newest_row(client, table, "trigger_id = @trigger_id", param, lookback_days)


def run_for_version(
    client,
    project: str,
    dataset: str,
    config: DatasetConfig,
    version: str,
    lookback_days: float = DEFAULT_LOOKBACK_DAYS,
) -> dict[str, Any] | None:
    """The newest ``training_runs`` row that names ``version`` (the run that produced it)."""
    table = runs_table(project, dataset, config)
    param = ("version", "STRING", version)
    return _newest_row(client, table, "model_version = @version", param, lookback_days)
