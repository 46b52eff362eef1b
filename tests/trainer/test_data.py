"""trainer.data: the time split (no leakage) and the deduplicating window read."""

from __future__ import annotations

import datetime as dt
import json
import random

import pytest

from dataset.config import load_config
from simulator.traffic import TrafficSimulator
from trainer.data import (
    RowTable,
    event_seconds,
    read_training_file,
    read_training_window,
    select_window,
    split_by_time,
    time_range,
    to_datetime,
    window_query,
    write_training_file,
)
from transforms.validation import utc_iso

TRAFFIC = load_config("configs/traffic.yaml")
END = 1_700_006_000.0


def training_rows(
    n: int,
    end: float = END,
    rate: float = 2.0,
    seed: int = 7,
    prefix: str = "ex",
    drift: bool = False,
) -> list[dict]:
    """Simulated traffic readings in the training table's row shape (JSON-ready)."""
    sim = TrafficSimulator(
        n_sensors=50, seed=seed, drift_after_seconds=0.0 if drift else None, start_time=0.0
    )
    out = []
    for i, reading in enumerate(sim.history(n, end, rate)):
        row = dict(reading)
        row["example_id"] = f"{prefix}-{i}"
        row["label_time"] = row["event_time"]
        row["label_source"] = "inline"
        row["ingestion_id"] = f"m-{prefix}-{i}"
        row["ingested_at"] = utc_iso(end + 1.0)
        out.append(row)
    return out


def test_split_by_time_has_no_leakage_whatever_the_order():
    rows = training_rows(1000)
    # Ties at the cut-off: duplicate some event times.
    for i in range(0, 1000, 7):
        rows[i]["event_time"] = rows[i - 1]["event_time"]
    shuffled = rows[:]
    random.Random(3).shuffle(shuffled)
    train, validation = split_by_time(shuffled, 0.2)
    assert len(train) + len(validation) == 1000
    assert 180 <= len(validation) <= 220
    assert max(event_seconds(r) for r in train) < min(event_seconds(r) for r in validation)
    assert [event_seconds(r) for r in train] == sorted(event_seconds(r) for r in train)
    assert {r["example_id"] for r in train}.isdisjoint(r["example_id"] for r in validation)


def test_split_by_time_refuses_impossible_splits():
    rows = training_rows(10)
    with pytest.raises(ValueError):
        split_by_time(rows, 0.0)
    with pytest.raises(ValueError):
        split_by_time(rows[:1], 0.2)
    same = [dict(r, event_time=rows[0]["event_time"]) for r in rows]
    with pytest.raises(ValueError, match="cannot split by time"):
        split_by_time(same, 0.2)


def test_time_values_and_range():
    t = to_datetime("2023-11-14T22:14:00.500Z")
    assert t == dt.datetime(2023, 11, 14, 22, 14, 0, 500000, tzinfo=dt.UTC)
    assert to_datetime(t.timestamp()) == t
    assert to_datetime(dt.datetime(2023, 1, 1)).tzinfo is not None
    rng = time_range(training_rows(5))
    assert rng["rows"] == 5 and rng["start"] < rng["end"]
    assert time_range([]) == {"start": None, "end": None, "rows": 0}


def test_window_query_dedupes_before_the_limit():
    sql = window_query("p.d.t", True, True, True)
    assert sql.index("ROW_NUMBER()") < sql.index("LIMIT @rows")
    assert "event_time >= @start" in sql and "event_time < @end" in sql
    assert "WHERE" not in window_query("p.d.t", False, False, False).split("AS t")[1].split(")")[0]


@pytest.mark.emulators
def test_read_training_window_from_bigquery(bigquery_client, gcp_project, unique_name):
    from dataset.resources import ensure_bigquery_tables

    ensure_bigquery_tables(gcp_project, unique_name, TRAFFIC, client=bigquery_client)
    try:
        rows = training_rows(300)
        # A redelivered copy of the newest 10 rows, ingested later with another label:
        # the later ingestion wins and the window still has distinct examples.
        copies = [
            dict(r, congested=1 - r["congested"], ingestion_id=r["ingestion_id"] + "-again")
            for r in rows[-10:]
        ]
        for c in copies:
            c["ingested_at"] = utc_iso(END + 60.0)
        table = f"{gcp_project}.{unique_name}.{TRAFFIC.tables.training_examples}"
        assert bigquery_client.insert_rows_json(table, rows + copies) == []

        window = read_training_window(bigquery_client, gcp_project, unique_name, TRAFFIC, rows=100)
        assert len(window) == 100
        assert len({r["example_id"] for r in window}) == 100
        times = [event_seconds(r) for r in window]
        assert times == sorted(times)
        assert window[-1]["example_id"] == rows[-1]["example_id"]
        assert isinstance(window[0]["event_time"], dt.datetime)
        flipped = {c["example_id"]: c["congested"] for c in copies}
        for r in window:
            if r["example_id"] in flipped:
                assert r["congested"] == flipped[r["example_id"]]

        everything = read_training_window(
            bigquery_client, gcp_project, unique_name, TRAFFIC, rows=10_000
        )
        assert len(everything) == 300

        start, end = rows[100]["event_time"], rows[150]["event_time"]
        ranged = read_training_window(
            bigquery_client, gcp_project, unique_name, TRAFFIC, start=start, end=end
        )
        assert [r["example_id"] for r in ranged] == [r["example_id"] for r in rows[100:150]]
    finally:
        bigquery_client.delete_dataset(unique_name, delete_contents=True, not_found_ok=True)


class _FakeResult:
    def __init__(self, calls):
        self.calls = calls

    def result(self):
        return self

    def to_arrow(self, create_bqstorage_client):
        import pyarrow as pa

        self.calls.append(create_bqstorage_client)
        return pa.table({"example_id": ["b", "a"], "event_time": [2.0, 1.0]})


class _FakeClient:
    def __init__(self):
        self.calls: list = []
        self.sql = ""

    def query(self, sql, job_config):
        self.sql = sql
        return _FakeResult(self.calls)


def test_storage_read_api_only_without_an_emulator(monkeypatch):
    client = _FakeClient()
    monkeypatch.delenv("BIGQUERY_EMULATOR_HOST", raising=False)
    rows = read_training_window(client, "p", "d", TRAFFIC, rows=2)
    assert client.calls == [True]
    assert [r["example_id"] for r in rows] == ["a", "b"]  # oldest first
    assert "`p.d.training_examples`" in client.sql and "LIMIT @rows" in client.sql
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", "http://127.0.0.1:9")
    read_training_window(client, "p", "d", TRAFFIC, start="2024-01-01T00:00:00Z")
    assert client.calls == [True, False]
    assert "event_time >= @start" in client.sql
    assert "LIMIT" not in client.sql  # a time range without rows: everything in it
    with pytest.raises(ValueError):
        read_training_window(client, "p", "d", TRAFFIC, rows=0)


class _TableClient:
    """A BigQuery stand-in over rows with ``event_time`` datetimes: applies the
    query's ``@start``/``@end``/``@rows`` parameters and records each query's."""

    def __init__(self, times: list[dt.datetime]):
        self.times = times
        self.queries: list[dict] = []

    def query(self, sql, job_config):
        params = {p.name: p.value for p in job_config.query_parameters}
        self.queries.append(params)
        assert ("event_time >= @start" in sql) == ("start" in params)
        picked = [
            t
            for t in self.times
            if ("start" not in params or t >= params["start"])
            and ("end" not in params or t < params["end"])
        ]
        picked = sorted(picked, reverse=True)[: params.get("rows")]
        return _TableResult(picked)


class _TableResult:
    def __init__(self, times):
        self.times = times

    def result(self):
        return self

    def to_arrow(self, create_bqstorage_client):
        import pyarrow as pa

        return pa.table(
            {"example_id": [t.isoformat() for t in self.times], "event_time": self.times}
        )


NOW = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)


def test_newest_rows_read_only_the_newest_partitions():
    """Enough rows in the last 2 days: one query, bounded on the partition column."""
    times = [NOW - dt.timedelta(hours=h) for h in range(0, 24 * 30, 6)]
    client = _TableClient(times)
    rows = read_training_window(client, "p", "d", TRAFFIC, rows=5, now=NOW)
    assert [r["event_time"] for r in rows] == sorted(times)[-5:]
    assert client.queries == [{"start": NOW - dt.timedelta(days=2), "rows": 5}]


def test_newest_rows_widen_the_bound_until_the_window_is_full():
    times = [NOW - dt.timedelta(days=d) for d in (1, 10, 60, 200, 1000, 1001)]
    client = _TableClient(times)
    rows = read_training_window(client, "p", "d", TRAFFIC, rows=4, now=NOW)
    assert [r["event_time"] for r in rows] == sorted(times)[-4:]
    assert [q.get("start") for q in client.queries] == [
        NOW - dt.timedelta(days=d) for d in (2, 14, 90, 365)
    ]
    # Fewer rows in the last year than wanted: the last step reads every partition.
    client = _TableClient(times)
    rows = read_training_window(client, "p", "d", TRAFFIC, rows=100, now=NOW)
    assert len(rows) == 6
    assert [q.get("start") for q in client.queries][-1] is None
    # With an end and no start, the bound counts back from the end.
    client = _TableClient(times)
    end = NOW - dt.timedelta(days=100)
    rows = read_training_window(client, "p", "d", TRAFFIC, rows=1, end=end, now=NOW)
    assert [r["event_time"] for r in rows] == [NOW - dt.timedelta(days=200)]
    assert client.queries[0] == {"start": end - dt.timedelta(days=2), "end": end, "rows": 1}


def _file(tmp_path, rows) -> str:
    path = str(tmp_path / "rows.jsonl")
    write_training_file(path, rows)
    return path


def test_training_file_is_read_column_wise_with_the_window_rules(tmp_path):
    rows = training_rows(400)
    for i in range(0, 400, 9):  # ties on event time: example id orders them
        rows[i]["event_time"] = rows[i - 1]["event_time"]
    # Redelivered copies ingested later win; exact copies: the first in the file wins.
    later = [
        dict(r, congested=1 - r["congested"], ingestion_id=r["ingestion_id"] + "-again")
        for r in rows[-30:-10]
    ]
    for r in later:
        r["ingested_at"] = utc_iso(END + 60.0)
    same_time = [dict(r, sensor_id="S9") for r in rows[5:8]]
    everything = rows + later + same_time
    random.Random(5).shuffle(everything)
    path = _file(tmp_path, everything)
    for bounds in (
        {"rows": 100},
        {"rows": 10_000},
        {"start": rows[100]["event_time"], "end": rows[150]["event_time"]},
        {"start": rows[300]["event_time"], "rows": 40},
    ):
        window = read_training_file(path, TRAFFIC, **bounds)
        assert isinstance(window, RowTable)
        expected = select_window(
            everything, TRAFFIC, bounds.get("rows"), bounds.get("start"), bounds.get("end")
        )
        assert [r["example_id"] for r in window] == [r["example_id"] for r in expected]
        assert list(window) == expected
        assert time_range(window) == time_range(expected)


def test_row_table_reads_like_a_list_of_rows(tmp_path):
    rows = training_rows(50)
    table = read_training_file(_file(tmp_path, rows), TRAFFIC, rows=50)
    listed = select_window(rows, TRAFFIC, 50)
    assert len(table) == 50 and table[0] == listed[0] and table[-1] == listed[-1]
    assert list(table[10:20]) == listed[10:20]
    assert [r["example_id"] for r in table.take([3, 1])] == [listed[3]["example_id"], "ex-1"]
    assert isinstance(table[0]["event_time"], dt.datetime)
    with pytest.raises(IndexError):
        table[50]


def test_a_file_arrow_cannot_type_is_read_row_by_row(tmp_path):
    """Mixed types stay as the file has them, for validation to name."""
    rows = training_rows(50)
    rows[3]["mean_speed_kmh"] = "fast"
    mixed = read_training_file(_file(tmp_path, rows), TRAFFIC, rows=50)
    assert isinstance(mixed, list) and "fast" in [r["mean_speed_kmh"] for r in mixed]
    rows = training_rows(50)
    rows[4]["vehicle_count"] = 12.5  # Arrow would make every count a float
    floats = read_training_file(_file(tmp_path, rows), TRAFFIC, rows=50)
    assert isinstance(floats, list) and isinstance(floats[0]["vehicle_count"], int)
    with open(tmp_path / "bad.jsonl", "w") as f:
        f.write(json.dumps(training_rows(1)[0]) + "\n[1, 2]\n")
    with pytest.raises(ValueError, match="bad.jsonl:2: not a training row"):
        read_training_file(str(tmp_path / "bad.jsonl"), TRAFFIC)


def test_split_by_time_column_wise_matches_the_rows(tmp_path):
    rows = training_rows(1000)
    for i in range(0, 1000, 7):
        rows[i]["event_time"] = rows[i - 1]["event_time"]
    shuffled = rows[:]
    random.Random(3).shuffle(shuffled)
    table = read_training_file(_file(tmp_path, shuffled), TRAFFIC, rows=1000)
    listed = select_window(shuffled, TRAFFIC, 1000)
    for got, want in zip(split_by_time(table, 0.2), split_by_time(listed, 0.2), strict=True):
        assert isinstance(got, RowTable)
        assert list(got) == want
