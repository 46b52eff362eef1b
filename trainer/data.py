"""Reading the training window from BigQuery and splitting it by event time.

``read_training_window`` returns the most recent ``rows`` training examples
(by event time) or the examples in a time range, one row per ``example_id``
(the latest ingestion wins: the streaming pipeline may write an example twice
when Pub/Sub redelivers a message before its dedupe window or after a
restart), oldest first. Deduplication runs in BigQuery (``ROW_NUMBER() OVER
(PARTITION BY example_id ORDER BY ingested_at DESC)``) *before* the ``LIMIT``,
so the window always has ``rows`` distinct examples when the table does.

Why a plain query and not the BigQuery Storage Read API against the emulator:
a query's result is an anonymous temporary table that the Storage Read API
reads, but the emulator does not materialise query results as a table (the
same gap that breaks ``ReadFromBigQuery(query=...)``), and
``BigQueryReadClient`` would need an insecure gRPC channel to the emulator's
gRPC port. So with ``BIGQUERY_EMULATOR_HOST`` set, results come through the
REST ``getQueryResults`` pages (fast enough for the default 20-50k rows);
against real BigQuery ``to_arrow(create_bqstorage_client=True)`` downloads
them with the Storage Read API (much faster for large windows). Both paths
go through Arrow, so the rows look the same either way.

Partition pruning: the table is DAY-partitioned on ``event_time``
(``dataset.tables.table_layouts``), and every query filters on it. A time
range filters directly. "The newest ``rows`` examples" asks the newest days
first: a lower bound ``LOOKBACK_DAYS[0]`` days before ``end`` (or now), widened
step by step while the table has fewer rows than wanted since then; only a
table with fewer rows than wanted in the last year is read whole (the last
step). Rows newer than the bound are never missed: each step reads every
partition from its bound on, future-dated rows included. (A range with an
end but no start, and no row limit, reads every partition before the end.)

``read_training_file`` reads the same window, with the same rules, from a
JSON Lines file of training-table rows (``write_training_file`` writes one):
how the first model is trained from history that is not in BigQuery
(``trainer.bootstrap``).

``split_by_time`` holds out the newest ``validation_fraction`` of the rows by
event time; every validation row is at or after every training row (rows that
share the cut-off time all go to validation), so nothing from the future leaks
into training.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from dataset.config import DatasetConfig
from dataset.times import event_seconds, rfc3339, to_datetime  # noqa: F401 (re-exported)

EVENT_TIME = "event_time"
TIMESTAMP_COLUMNS = ("event_time", "label_time", "ingested_at")
_RANK = "_dedupe_rank"
# Lower bounds (days before end or now) tried in turn for "the newest N rows";
# None: no bound (only when the last year holds fewer than N rows).
LOOKBACK_DAYS: tuple[int | None, ...] = (2, 14, 90, 365, None)

Row = dict[str, Any]


def use_storage_api() -> bool:
    """Whether to download query results with the Storage Read API (not on the emulator)."""
    return not os.environ.get("BIGQUERY_EMULATOR_HOST")


def window_query(table: str, has_start: bool, has_end: bool, has_limit: bool) -> str:
    """The deduplicating window query (parameters ``@start``, ``@end``, ``@rows``)."""
    where = []
    if has_start:
        where.append(f"{EVENT_TIME} >= @start")
    if has_end:
        where.append(f"{EVENT_TIME} < @end")
    where_sql = f"WHERE {' AND '.join(where)}" if where else ""
    limit_sql = "LIMIT @rows" if has_limit else ""
    return (
        f"SELECT * EXCEPT({_RANK}) FROM (\n"
        f"  SELECT t.*, ROW_NUMBER() OVER (\n"
        f"    PARTITION BY example_id ORDER BY ingested_at DESC, ingestion_id DESC) AS {_RANK}\n"
        f"  FROM `{table}` AS t {where_sql}\n"
        f") WHERE {_RANK} = 1\n"
        f"ORDER BY {EVENT_TIME} DESC, example_id DESC {limit_sql}"
    )


def window_bounds(config: DatasetConfig, rows: int | None, start: Any, end: Any):
    """``(rows, start, end)`` of a window: the default size, UTC datetimes, checked.

    Raises:
        ValueError: for a non-positive ``rows`` or ``start >= end``.
    """
    if rows is None and start is None and end is None:
        rows = config.retraining.training_window_rows
    if rows is not None and rows <= 0:
        raise ValueError(f"rows must be positive, got {rows}")
    start_dt = None if start is None else to_datetime(start)
    end_dt = None if end is None else to_datetime(end)
    if start_dt is not None and end_dt is not None and start_dt >= end_dt:
        raise ValueError(f"empty time range: start {start_dt} is not before end {end_dt}")
    return rows, start_dt, end_dt


def read_training_window(
    client,
    project: str,
    dataset: str,
    config: DatasetConfig,
    rows: int | None = None,
    start: Any = None,
    end: Any = None,
    now: dt.datetime | None = None,
) -> list[Row]:
    """Reads the training window, one row per example, oldest first.

    Args:
        client: a ``google.cloud.bigquery.Client``.
        project: the project of the dataset.
        dataset: the BigQuery dataset holding ``config.tables.training_examples``.
        config: the dataset config.
        rows: at most this many rows, the most recent by event time. Defaults to
            ``config.retraining.training_window_rows`` when neither ``start`` nor
            ``end`` is given; with a time range, None means every row in it.
        start: inclusive lower bound on event time (datetime, epoch seconds or RFC 3339).
        end: exclusive upper bound on event time.
        now: the clock for the newest-rows lookback (default: the current time).

    Returns:
        Rows as dicts with the training table's columns; TIMESTAMP columns are
        UTC datetimes. Sorted by event time (then example id).

    Raises:
        ValueError: for a non-positive ``rows`` or ``start >= end``.
    """
    rows, start_dt, end_dt = window_bounds(config, rows, start, end)

    table = f"{project}.{dataset}.{config.tables.training_examples}"
    if start_dt is not None or rows is None:
        return _query_window(client, table, start_dt, end_dt, rows)
    anchor = end_dt or now or dt.datetime.now(dt.UTC)
    for days in LOOKBACK_DAYS:
        bound = None if days is None else anchor - dt.timedelta(days=days)
        out = _query_window(client, table, bound, end_dt, rows)
        if len(out) >= rows:
            break
    return out


def _query_window(client, table: str, start_dt, end_dt, rows: int | None) -> list[Row]:
    from google.cloud import bigquery

    params = []
    if start_dt is not None:
        params.append(bigquery.ScalarQueryParameter("start", "TIMESTAMP", start_dt))
    if end_dt is not None:
        params.append(bigquery.ScalarQueryParameter("end", "TIMESTAMP", end_dt))
    if rows is not None:
        params.append(bigquery.ScalarQueryParameter("rows", "INT64", int(rows)))
    sql = window_query(table, start_dt is not None, end_dt is not None, rows is not None)
    job = client.query(sql, job_config=bigquery.QueryJobConfig(query_parameters=params))
    arrow = job.result().to_arrow(create_bqstorage_client=use_storage_api())
    out = arrow.to_pylist()
    out.reverse()  # the query returns newest first (for the LIMIT)
    return out


def select_window(
    rows: Iterable[Mapping[str, Any]],
    config: DatasetConfig,
    rows_limit: int | None = None,
    start: Any = None,
    end: Any = None,
) -> list[Row]:
    """``window_query``'s rules in Python: one row per example (the latest
    ingestion wins), ``start <= event_time < end``, the newest ``rows_limit``
    (default ``training_window_rows`` when there is no time range), oldest first.
    """
    rows_limit, lo, hi = window_bounds(config, rows_limit, start, end)
    latest: dict[str, Row] = {}
    for row in rows:
        typed = {
            k: to_datetime(v) if k in TIMESTAMP_COLUMNS and v is not None else v
            for k, v in row.items()
        }
        t = typed[EVENT_TIME]
        if (lo is not None and t < lo) or (hi is not None and t >= hi):
            continue
        key = str(typed["example_id"])
        old = latest.get(key)
        if old is None or (typed["ingested_at"], str(typed.get("ingestion_id"))) > (
            old["ingested_at"],
            str(old.get("ingestion_id")),
        ):
            latest[key] = typed
    newest = sorted(latest.values(), key=lambda r: (r[EVENT_TIME], str(r["example_id"])))
    if rows_limit is not None:
        newest = newest[-rows_limit:]
    return newest


def read_training_file(
    path: str,
    config: DatasetConfig,
    rows: int | None = None,
    start: Any = None,
    end: Any = None,
) -> list[Row]:
    """``read_training_window`` from a JSON Lines file of training-table rows.

    Raises:
        ValueError: a missing file, a line that is not a JSON object, or bad bounds.
    """
    if not os.path.exists(path):
        raise ValueError(f"training file {path!r} does not exist")
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON: {e}") from None
            if not isinstance(record, dict) or EVENT_TIME not in record:
                raise ValueError(f"{path}:{n}: not a training row (a JSON object with event_time)")
            records.append(record)
    return select_window(records, config, rows, start, end)


def write_training_file(path: str, rows: Iterable[Mapping[str, Any]]) -> int:
    """Writes training-table rows as JSON Lines (times as RFC 3339); returns the count."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(dict(row), default=rfc3339) + "\n")
            n += 1
    return n


def split_by_time(
    rows: Sequence[Mapping[str, Any]], validation_fraction: float
) -> tuple[list[Row], list[Row]]:
    """Splits rows at an event-time cut-off: the newest ``validation_fraction`` is validation.

    Every validation row's event time is >= every training row's event time
    (rows sharing the cut-off instant all go to validation), whatever the
    input order. Both lists come back sorted by event time.

    Raises:
        ValueError: if ``validation_fraction`` is not in (0, 1), or either side
            would be empty (too few rows or a single event time).
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    times = [event_seconds(r) for r in rows]
    order = sorted(range(len(rows)), key=lambda i: times[i])
    cut = int(math.floor(len(order) * (1.0 - validation_fraction)))
    if cut <= 0 or cut >= len(order):
        raise ValueError(f"cannot hold out {validation_fraction:.0%} of {len(rows)} rows")
    cutoff = times[order[cut]]
    train = [dict(rows[i]) for i in order if times[i] < cutoff]
    validation = [dict(rows[i]) for i in order if times[i] >= cutoff]
    if not train:
        raise ValueError(
            f"all {len(rows)} rows are at or after the cut-off {rfc3339(cutoff)}; "
            "cannot split by time"
        )
    return train, validation


def time_range(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``{"start", "end", "rows"}`` of some rows (RFC 3339; None when empty)."""
    if not rows:
        return {"start": None, "end": None, "rows": 0}
    times = [event_seconds(r) for r in rows]
    return {"start": rfc3339(min(times)), "end": rfc3339(max(times)), "rows": len(rows)}
