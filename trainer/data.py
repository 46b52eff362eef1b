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
REST ``getQueryResults`` pages (about 1.5k rows/s here: 100k rows in about
a minute, per-cell JSON on both sides; ``benchmarks/trainer_scale.py``);
against real BigQuery ``to_arrow(create_bqstorage_client=True)`` downloads
them with the Storage Read API (much faster for large windows). Both paths
go through Arrow, so the rows look the same either way.

**Column-wise.** The window stays an Arrow table: both readers return a
``RowTable``, which indexes and iterates as row dicts (TIMESTAMP columns as
UTC datetimes) for code that wants rows, and hands whole columns
(``RowTable.column``) to the trainer's heavy steps: ``split_by_time``,
``trainer.statistics``, ``trainer.validation`` and
``model.features.encode_batch`` never build a dict per row. At 1M rows that
took the trainer from 572 s and 3.5 GiB to about 70 s and 1.2 GiB.

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
(``trainer.bootstrap``). Arrow's JSON reader parses it (``select_table``
applies the window rules to the columns); a file Arrow cannot type as the
values are written (a column mixing strings and numbers, an ``int`` column
with fractional values, other time formats) is read row by row into dicts
(``select_window``), so validation reports the values as the file has them.

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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dataset.config import DatasetConfig
from dataset.times import event_seconds, rfc3339, to_datetime  # noqa: F401 (re-exported)

EVENT_TIME = "event_time"
TIMESTAMP_COLUMNS = ("event_time", "label_time", "ingested_at")
_RANK = "_dedupe_rank"
# Lower bounds (days before end or now) tried in turn for "the newest N rows";
# None: no bound (only when the last year holds fewer than N rows).
LOOKBACK_DAYS: tuple[int | None, ...] = (2, 14, 90, 365, None)

Row = dict[str, Any]
# Rows converted to dicts at a time when a RowTable is iterated.
ITER_BATCH_ROWS = 10_000


class RowTable(Sequence):
    """Training rows held column-wise (an Arrow table), readable as a sequence of dicts.

    What ``read_training_window`` and ``read_training_file`` return. Code that
    wants rows indexes or iterates it (each row a dict, TIMESTAMP columns as
    UTC datetimes, as ``Table.to_pylist`` gives them); the trainer's heavy
    steps (``split_by_time``, ``trainer.statistics``, ``trainer.validation``,
    ``model.features.encode_batch``) read whole columns with ``column``
    instead, so a million-row window never becomes a million dicts.
    """

    def __init__(self, table: pa.Table):
        self.table = table.combine_chunks() if table.num_columns else table

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, Any]]) -> RowTable:
        """A RowTable of dict rows (Arrow infers the column types)."""
        return cls(pa.Table.from_pylist([dict(r) for r in rows]))

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, index):
        if isinstance(index, slice):
            return RowTable(self.table.take(np.arange(len(self))[index]))
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"row {index} of {n}")
        return self.table.slice(index, 1).to_pylist()[0]

    def __iter__(self) -> Iterator[Row]:
        for batch in self.table.to_batches(max_chunksize=ITER_BATCH_ROWS):
            yield from batch.to_pylist()

    def __repr__(self) -> str:
        return f"RowTable({len(self)} rows, columns {self.column_names})"

    @property
    def column_names(self) -> list[str]:
        return list(self.table.column_names)

    def column(self, name: str) -> pa.Array | None:
        """The column ``name`` as one Arrow array (None if the table has no such column)."""
        if name not in self.table.column_names:
            return None
        col = self.table.column(name)
        return col.chunk(0) if col.num_chunks == 1 else pa.concat_arrays(col.chunks)

    def take(self, indexes: Any) -> RowTable:
        """The rows at ``indexes`` (in that order)."""
        return RowTable(self.table.take(pa.array(np.asarray(indexes, dtype=np.int64))))


def event_seconds_array(rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Every row's event time as epoch seconds (float64), column-wise when it can."""
    if isinstance(rows, RowTable):
        col = rows.column(EVENT_TIME)
        if col is not None and pa.types.is_timestamp(col.type) and col.null_count == 0:
            micros = col.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
            return micros.to_numpy().astype(np.float64) / 1e6
    return np.asarray([event_seconds(r) for r in rows], dtype=np.float64)


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
) -> RowTable:
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
        A ``RowTable`` (column-wise; indexed or iterated, rows are dicts with the
        training table's columns, TIMESTAMP columns as UTC datetimes). Sorted
        by event time (then example id).

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


def _query_window(client, table: str, start_dt, end_dt, rows: int | None) -> RowTable:
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
    # The query returns newest first (for the LIMIT); the window is oldest first.
    return RowTable(arrow.take(pa.array(np.arange(arrow.num_rows - 1, -1, -1, dtype=np.int64))))


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


def select_table(
    table: pa.Table,
    config: DatasetConfig,
    rows_limit: int | None = None,
    start: Any = None,
    end: Any = None,
) -> RowTable:
    """``select_window`` column-wise, on an Arrow table with a TIMESTAMP ``event_time``.

    Same rules: one row per ``example_id`` (the latest ``(ingested_at,
    ingestion_id)`` wins; on a tie the first row), ``start <= event_time <
    end``, the newest ``rows_limit``, ordered by ``(event_time, example_id)``.
    """
    rows_limit, lo, hi = window_bounds(config, rows_limit, start, end)
    time_type = table.schema.field(EVENT_TIME).type
    keep = None
    if lo is not None:
        keep = pc.greater_equal(table[EVENT_TIME], pa.scalar(lo, time_type))
    if hi is not None:
        below = pc.less(table[EVENT_TIME], pa.scalar(hi, time_type))
        keep = below if keep is None else pc.and_(keep, below)
    if keep is not None:
        table = table.filter(keep)
    ids = pc.cast(table["example_id"], pa.string())
    work = pa.table({"id": ids, "t": table[EVENT_TIME], "i": np.arange(table.num_rows)})
    if pc.count_distinct(ids).as_py() < table.num_rows:  # duplicates: the latest ingestion wins
        ingestion = (
            pc.fill_null(pc.cast(table["ingestion_id"], pa.string()), "None")
            if "ingestion_id" in table.column_names
            else pa.nulls(table.num_rows, pa.string()).fill_null("None")
        )
        ranked = pa.table(
            {"id": ids, "at": table["ingested_at"], "ing": ingestion, "i": work["i"]}
        ).sort_by([("id", "ascending"), ("at", "ascending"), ("ing", "ascending"),
                   ("i", "descending")])  # fmt: skip
        ranked_ids = ranked["id"].to_numpy(zero_copy_only=False)
        last = np.ones(len(ranked_ids), dtype=bool)
        last[:-1] = ranked_ids[1:] != ranked_ids[:-1]
        work = work.take(pa.array(np.sort(ranked["i"].to_numpy()[last])))
    order = work.sort_by([("t", "ascending"), ("id", "ascending")])["i"].to_numpy()
    if rows_limit is not None:
        order = order[-rows_limit:]
    return RowTable(table.take(pa.array(order)))


def _read_json_table(path: str, config: DatasetConfig) -> pa.Table | None:
    """The file as an Arrow table, or None when Arrow cannot type it (then rows are parsed).

    Also None when an ``int`` feature or label column came back as floats: Arrow
    types a column mixing ints and floats as floats, and validation should name
    the values as the file has them.
    """
    import pyarrow.json as pa_json

    stamp = pa.timestamp("us", tz="UTC")
    schema = pa.schema([(name, stamp) for name in TIMESTAMP_COLUMNS])
    options = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="infer")
    try:
        table = pa_json.read_json(path, parse_options=options)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None  # not one JSON object per line, mixed types, other time formats
    if table.num_rows == 0 or table[EVENT_TIME].null_count:
        return None
    ints = [f.name for f in config.features if f.type == "int"]
    if config.label.type == "int":
        ints.append(config.label.field)
    for name in ints:
        if name in table.column_names and pa.types.is_floating(table[name].type):
            return None
    for name in TIMESTAMP_COLUMNS[1:]:  # absent from the file: no column, as with dict rows
        if table[name].null_count == table.num_rows:
            table = table.drop_columns([name])
    return table


def read_training_file(
    path: str,
    config: DatasetConfig,
    rows: int | None = None,
    start: Any = None,
    end: Any = None,
) -> Sequence[Row]:
    """``read_training_window`` from a JSON Lines file of training-table rows.

    The file is parsed column-wise by Arrow (a ``RowTable``, ``select_table``);
    a file Arrow cannot type (a column mixing strings and numbers, event times
    that are not RFC 3339 strings) is read row by row (a list of dicts,
    ``select_window``) with the same rules, so validation sees what is there.

    Raises:
        ValueError: a missing file, a line that is not a JSON object, or bad bounds.
    """
    if not os.path.exists(path):
        raise ValueError(f"training file {path!r} does not exist")
    window_bounds(config, rows, start, end)  # bad bounds fail before the file is read
    table = _read_json_table(path, config)
    if table is not None:
        return select_table(table, config, rows, start, end)
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
) -> tuple[Sequence[Row], Sequence[Row]]:
    """Splits rows at an event-time cut-off: the newest ``validation_fraction`` is validation.

    Every validation row's event time is >= every training row's event time
    (rows sharing the cut-off instant all go to validation), whatever the
    input order. Both sides come back sorted by event time (stable): two
    ``RowTable`` for a ``RowTable``, else two lists of dicts.

    Raises:
        ValueError: if ``validation_fraction`` is not in (0, 1), or either side
            would be empty (too few rows or a single event time).
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    times = event_seconds_array(rows)
    order = np.argsort(times, kind="stable")
    cut = int(math.floor(len(order) * (1.0 - validation_fraction)))
    if cut <= 0 or cut >= len(order):
        raise ValueError(f"cannot hold out {validation_fraction:.0%} of {len(rows)} rows")
    cutoff = times[order[cut]]
    in_train = times[order] < cutoff
    if not in_train.any():
        raise ValueError(
            f"all {len(rows)} rows are at or after the cut-off {rfc3339(float(cutoff))}; "
            "cannot split by time"
        )
    if isinstance(rows, RowTable):
        return rows.take(order[in_train]), rows.take(order[~in_train])
    train = [dict(rows[i]) for i in order[in_train]]
    validation = [dict(rows[i]) for i in order[~in_train]]
    return train, validation


def time_range(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``{"start", "end", "rows"}`` of some rows (RFC 3339; None when empty)."""
    if not len(rows):
        return {"start": None, "end": None, "rows": 0}
    times = event_seconds_array(rows)
    return {
        "start": rfc3339(float(times.min())),
        "end": rfc3339(float(times.max())),
        "rows": len(rows),
    }
