"""Training-run status rows and quarantine rows in BigQuery.

``training_runs`` is append-only: one row per status change of a run
(``queued``, ``running``, ``succeeded``, ``rejected``, ``failed``); the latest
row of a run is its state. The launcher writes ``queued`` and polls
``latest_run_status``; the training job (``trainer.task``) writes the rest.

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
from trainer.data import rfc3339

API_TIMEOUT_SECONDS = 30.0
STATUSES = ("queued", "running", "succeeded", "rejected", "failed", "rolled_back")
TERMINAL_STATUSES = ("succeeded", "rejected", "failed")
# Tie-break for rows of one trigger recorded in the same microsecond (other statuses,
# e.g. the launcher's "rolled_back", come after the run's own).
_STATUS_RANK = {"queued": 0, "running": 1, "succeeded": 2, "rejected": 2, "failed": 2}

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
            ``status`` are required, ``recorded_at`` defaults to now. ``metrics``
            and ``gate_decisions`` may be dicts (JSON encoded here).

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
    typed = typed_row(document, TRAINING_RUNS_SCHEMA)
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
    return f"{project}.{dataset}.{config.tables.training_runs}"


def quarantine_table(project: str, dataset: str, config: DatasetConfig) -> str:
    return f"{project}.{dataset}.{config.tables.data_quarantine}"


def _status_order(row: Mapping[str, Any]) -> tuple:
    return row["recorded_at"], _STATUS_RANK.get(row["status"], 3)


def _status_rows(client, sql: str, params: list) -> list[dict[str, Any]]:
    from google.cloud import bigquery

    job = client.query(sql, job_config=bigquery.QueryJobConfig(query_parameters=params))
    rows = [dict(r) for r in job.result(timeout=API_TIMEOUT_SECONDS)]
    rows.sort(key=_status_order)
    return rows


def final_statuses(rows: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Each run's newest status, from status rows with ``run_id``, ``status``, ``recorded_at``.

    The table is append-only (queued, running, then a terminal status, maybe
    ``rolled_back`` later), so a run's state is its newest row; rows recorded in
    the same microsecond are ordered as in ``latest_run_status``.
    """
    latest: dict[str, Mapping[str, Any]] = {}
    for row in rows:
        seen = latest.get(row["run_id"])
        if seen is None or _status_order(row) >= _status_order(seen):
            latest[row["run_id"]] = row
    return {run_id: row["status"] for run_id, row in latest.items()}


def run_history(
    client, project: str, dataset: str, config: DatasetConfig, run_id: str
) -> list[dict[str, Any]]:
    """Every status row of one run, oldest first (TIMESTAMPs as datetimes)."""
    from google.cloud import bigquery

    table = runs_table(project, dataset, config)
    return _status_rows(
        client,
        f"SELECT * FROM `{table}` WHERE run_id = @run_id",
        [bigquery.ScalarQueryParameter("run_id", "STRING", run_id)],
    )


def latest_run_status(
    client, project: str, dataset: str, config: DatasetConfig, trigger_id: str
) -> dict[str, Any] | None:
    """The newest status row recorded for ``trigger_id``, or None.

    The newest by ``recorded_at``; rows recorded in the same microsecond are
    ordered queued < running < terminal < others (e.g. ``rolled_back``).
    TIMESTAMP columns come back as UTC datetimes; ``metrics`` and
    ``gate_decisions`` are JSON strings as stored.
    """
    from google.cloud import bigquery

    table = runs_table(project, dataset, config)
    rows = _status_rows(
        client,
        f"SELECT * FROM `{table}` WHERE trigger_id = @trigger_id "
        "ORDER BY recorded_at DESC LIMIT 20",
        [bigquery.ScalarQueryParameter("trigger_id", "STRING", trigger_id)],
    )
    return rows[-1] if rows else None
