"""Runs the BigQuery emulator (bqemulator's own CLI) without a table copy per write.

bqemulator 1.4.0 takes a time-travel snapshot after every write to a table
(``SnapshotManager.record_change`` -> ``capture``: ``CREATE TABLE <snapshot>
AS SELECT * FROM <table>``, kept for 7 days). Under streaming inserts every
``insertAll`` request then copies the whole table, so the emulator's memory and
its time per insert grow with the table: 2,000 five-row inserts into one table
ended at 2.8 GiB RSS and 32 ms per insert (244 MiB and a flat 9 ms without the
copies; ``python -m benchmarks.emulator_inserts``), and in a ten-minute
``run_local.sh`` at 200 events/s the emulator reached 9.3 GiB and ~45% of a
core after six minutes, on the pipeline's two cores.

This entry point drops those automatic snapshots and runs bqemulator's CLI
unchanged otherwise (same flags: ``python local/bqemulator_main.py start ...``;
run as a script, so it imports nothing from this project and works from any
directory).
The change events that materialized views follow are still published, and
``CREATE SNAPSHOT TABLE`` still works. ``FOR SYSTEM_TIME AS OF`` then reads
the live table; nothing in this project queries it. Set
``LOCAL_BQ_TIME_TRAVEL=1`` to keep bqemulator's snapshots. Local only: real
BigQuery has no such cost, and production code never imports ``local/``.
"""

from __future__ import annotations

import inspect
import os
import sys
from typing import Any

TIME_TRAVEL_ENV = "LOCAL_BQ_TIME_TRAVEL"


def check_internals() -> list[str]:
    """What changed in the bqemulator internals the patch relies on (empty: none)."""
    from bqemulator.versioning.snapshots import SnapshotManager

    expected = {
        "capture": ['kind: str = "AUTO"', "CREATE TABLE"],
        "record_change": ["self.capture(", 'kind="AUTO"'],
    }
    problems = []
    for name, needles in expected.items():
        method = getattr(SnapshotManager, name, None)
        if method is None:
            problems.append(f"bqemulator SnapshotManager.{name} is gone")
        elif not all(needle in inspect.getsource(method) for needle in needles):
            problems.append(f"bqemulator SnapshotManager.{name} changed: no {needles}")
    return problems


def without_automatic_snapshots() -> None:
    """``SnapshotManager.capture`` skips ``AUTO`` snapshots (returns None, copies nothing)."""
    from bqemulator.versioning.snapshots import SnapshotManager

    original = SnapshotManager.capture

    def capture(self, project_id: str, dataset_id: str, table_id: str, *, kind: str = "AUTO"):
        if kind == "AUTO":
            return None
        return original(self, project_id, dataset_id, table_id, kind=kind)

    SnapshotManager.capture = capture


def main(argv: list[str] | None = None) -> Any:
    """bqemulator's CLI, without automatic snapshots unless ``LOCAL_BQ_TIME_TRAVEL=1``."""
    from bqemulator.cli import main as bqemulator_main

    if os.environ.get(TIME_TRAVEL_ENV, "").strip() != "1":
        problems = check_internals()
        if problems:
            print(
                "local.bqemulator_main: bqemulator changed, running it with its per-write "
                f"snapshots (slower as tables grow): {'; '.join(problems)}",
                file=sys.stderr,
            )
        else:
            without_automatic_snapshots()
    sys.argv = ["bqemulator", *(sys.argv[1:] if argv is None else argv)]
    return bqemulator_main()


if __name__ == "__main__":
    sys.exit(main())
