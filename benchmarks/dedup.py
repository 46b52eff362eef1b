"""Benchmark: the in-pipeline dedup step (``DeduplicateMessages``) on the local runner.

Feeds ``--ids`` distinct message ids (plus ``--duplicate-fraction`` redeliveries)
through ``DeduplicateMessages`` on the streaming DirectRunner with a TestStream,
in bundles of 10 (the local runner's Pub/Sub pull size), and reports
elements/s through the step and the state bytes each element reads and writes.
With ``--expire`` the stream ends by advancing processing time past the dedup
window, so every id's expiry timer fires.

    python -m benchmarks.dedup [--ids 2000] [--repeat 3] [--label after]

Results are appended to ``benchmarks/results/dedup.jsonl``. To measure another
implementation (e.g. the previous commit), run this file with ``PYTHONPATH``
pointing at that checkout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import json
import pickle
import platform
import statistics
import time
from pathlib import Path

import apache_beam as beam
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms.window import TimestampedValue

from transforms.ingestion import DeduplicateMessages

RESULTS = Path(__file__).resolve().parent / "results" / "dedup.jsonl"
WINDOW_SECONDS = 600
T0 = 1_700_000_000.0


def _stream(ids: int, duplicate_fraction: float, expire: bool) -> tuple[TestStream, int]:
    every = max(1, round(1 / duplicate_fraction)) if duplicate_fraction > 0 else 0
    elements = []
    for i in range(ids):
        msg = PubsubMessage(b"{}", {"message_id": f"m{i}"})
        elements.append(TimestampedValue(msg, T0 + i * 0.01))
        if every and i % every == 0:
            elements.append(TimestampedValue(msg, T0 + i * 0.01))
    stream = TestStream().advance_watermark_to(T0)
    for start in range(0, len(elements), 10):
        stream = stream.add_elements(elements[start : start + 10]).advance_processing_time(0.01)
    if expire:
        stream = stream.advance_processing_time(WINDOW_SECONDS + 1)
    return stream.advance_watermark_to_infinity(), len(elements)


# The legacy DirectRunner's streaming metrics keep only one bundle's counts,
# so outputs are counted here (the runner is in-process).
_EMITTED: list[str] = []


def _emitted(message: PubsubMessage) -> None:
    _EMITTED.append(message.attributes["message_id"])


def run_once(ids: int, duplicate_fraction: float, expire: bool) -> dict:
    """One pipeline run; elements/s through TestStream -> dedup -> count."""
    stream, n = _stream(ids, duplicate_fraction, expire)
    options = PipelineOptions(flags=[], runner="BundleBasedDirectRunner")
    options.view_as(StandardOptions).streaming = True
    p = beam.Pipeline(options=options)
    # The clock starts where TestStream's processing-time clock starts (0);
    # the sharded implementation measured as "before" has no clock parameter.
    kwargs = {}
    if "clock" in inspect.signature(DeduplicateMessages).parameters:
        kwargs["clock"] = lambda: 0.0
    unique = p | stream | DeduplicateMessages("message_id", WINDOW_SECONDS, **kwargs)
    _ = unique | beam.Map(_emitted)
    _EMITTED.clear()
    started = time.perf_counter()
    result = p.run()
    result.wait_until_finish()
    elapsed = time.perf_counter() - started
    return {
        "elements": n,
        "seconds": round(elapsed, 3),
        "elements_per_s": round(n / elapsed, 1),
        "emitted": len(_EMITTED),
        "distinct_emitted": len(set(_EMITTED)),
    }


def state_bytes_per_element(ids_in_window: int, shards: int | None) -> int:
    """Bytes of dedup state one element reads and writes.

    Sharded ``{id: expiry}`` dicts (``shards``): the pickled dict of one shard
    holding ``ids_in_window / shards`` ids. Per-id state (``shards`` None): one
    BooleanCoder byte.
    """
    if shards is None:
        return 1
    per_shard = {f"m{i}": T0 + i for i in range(ids_in_window // shards)}
    return len(pickle.dumps(per_shard))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dedup", description=__doc__)
    parser.add_argument("--ids", type=int, default=2000)
    parser.add_argument("--duplicate-fraction", type=float, default=0.1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--label", default="current", help="name of the implementation measured")
    parser.add_argument("--expire", action="store_true", help="also advance past the window")
    args = parser.parse_args(argv)
    runs = [run_once(args.ids, args.duplicate_fraction, args.expire) for _ in range(args.repeat)]
    rates = [r["elements_per_s"] for r in runs]
    sharded = "dedup_shard" in vars(__import__("transforms.ingestion").ingestion)
    result = {
        "benchmark": "dedup",
        "label": args.label,
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.python_version()}",
        "beam": beam.__version__,
        "ids": args.ids,
        "duplicate_fraction": args.duplicate_fraction,
        "median_elements_per_s": statistics.median(rates),
        "runs": runs,
        "state_bytes_per_element_at_ids": state_bytes_per_element(
            args.ids, 16 if sharded else None
        ),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a", encoding="utf-8") as f:
        f.write(json.dumps(result) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    # Run as the importable module, so the pipeline's functions (and _EMITTED)
    # are the module's, not __main__'s copies.
    from benchmarks import dedup

    raise SystemExit(dedup.main())
