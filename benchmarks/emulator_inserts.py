"""Benchmark: the local BigQuery emulator under many small streaming inserts.

Starts the emulator as ``run_local.sh`` does (``local/bqemulator_main.py``:
bqemulator without a table copy per write), and once more as bqemulator ships
(``LOCAL_BQ_TIME_TRAVEL=1``: a time-travel snapshot, i.e. a copy of the whole
table, after every insert). Each gets ``--requests`` ``insertAll`` requests of
``--rows`` rows into one 22-column table, as the pipeline's sinks send them.
At each quarter it records the emulator's RSS, the wall and CPU milliseconds
per request over that quarter, and checks at the end that every row is there.

    python -m benchmarks.emulator_inserts [--requests 2000] [--rows 5]

Results: ``benchmarks/results/emulator_inserts.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from local import bqemulator_main, emulators

RESULTS = Path(__file__).resolve().parent / "results" / "emulator_inserts.json"
PROJECT = "bench-project"
EMULATOR_ENV = "BIGQUERY_EMULATOR_HOST"
COLUMNS = [{"name": f"f{i}", "type": "FLOAT"} for i in range(20)] + [
    {"name": "key", "type": "STRING"},
    {"name": "event_time", "type": "TIMESTAMP"},
]


def measure(requests: int, rows: int, time_travel: bool, log=print) -> dict[str, Any]:
    """Runs one emulator variant; RSS and ms per request at each quarter."""
    import psutil
    from google.cloud import bigquery

    from dataset.resources import bigquery_client

    if requests < 4 or rows < 1:
        raise ValueError("--requests must be ≥ 4 and --rows ≥ 1")
    variant = "bqemulator as shipped (snapshot per write)" if time_travel else "local"
    # The emulator reads the first; the client (anonymous credentials) the second.
    previous = {
        name: os.environ.get(name) for name in (bqemulator_main.TIME_TRAVEL_ENV, EMULATOR_ENV)
    }
    os.environ[bqemulator_main.TIME_TRAVEL_ENV] = "1" if time_travel else "0"
    quarters = []
    try:
        with tempfile.TemporaryDirectory() as state:
            with emulators.bigquery_emulator(state, project=PROJECT) as info:
                os.environ[EMULATOR_ENV] = info.env[EMULATOR_ENV]
                client = bigquery_client(PROJECT)
                client.create_dataset("bench")
                schema = [bigquery.SchemaField(c["name"], c["type"]) for c in COLUMNS]
                table = client.create_table(bigquery.Table(f"{PROJECT}.bench.t", schema=schema))
                process = psutil.Process(info.pid)
                row = {f"f{i}": 1.5 for i in range(20)}
                row.update(key="sensor-1", event_time="2026-01-01T00:00:00Z")
                start_rss = process.memory_info().rss / 2**20
                wall0, cpu0 = time.perf_counter(), sum(process.cpu_times()[:2])
                for r in range(requests):
                    errors = client.insert_rows_json(table, [row] * rows)
                    if errors:
                        raise RuntimeError(f"insert {r} refused: {errors[:1]}")
                    if (r + 1) % (requests // 4) == 0 and len(quarters) < 4:
                        wall, cpu = time.perf_counter(), sum(process.cpu_times()[:2])
                        n = requests // 4
                        quarters.append(
                            {
                                "requests": r + 1,
                                "rows": (r + 1) * rows,
                                "rss_mib": round(process.memory_info().rss / 2**20, 1),
                                "wall_ms_per_request": round((wall - wall0) * 1000 / n, 2),
                                "emulator_cpu_ms_per_request": round((cpu - cpu0) * 1000 / n, 2),
                            }
                        )
                        wall0, cpu0 = wall, cpu
                        log(f"[{variant}] {quarters[-1]}")
                count_sql = f"SELECT COUNT(*) AS c FROM `{PROJECT}.bench.t`"
                landed = next(iter(client.query(count_sql).result())).c
                client.close()
    finally:  # the caller's environment as it was
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    if landed != requests * rows:
        raise RuntimeError(f"{landed} rows in the table, {requests * rows} inserted")
    return {"variant": variant, "start_rss_mib": round(start_rss, 1), "quarters": quarters}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=5)
    args = parser.parse_args(argv)
    runs = [measure(args.requests, args.rows, time_travel) for time_travel in (False, True)]
    result = {
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "requests": args.requests,
        "rows_per_request": args.rows,
        "columns": len(COLUMNS),
        "runs": runs,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "method": "insertAll through google-cloud-bigquery, one table, sequential requests; "
        "RSS of the emulator process (psutil); wall and emulator CPU ms per request over "
        "each quarter of the requests; the row count checked at the end",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
