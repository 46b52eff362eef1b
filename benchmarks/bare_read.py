"""Bare-read baseline: ``ReadFromPubSub`` -> no-op on the local runner.

Reads a backlog already in ``--subscription`` with the same runner settings as
the pipeline (the legacy bundle-based DirectRunner, streaming; accelerated
unless ``--no_accelerate``) and prints one JSON line: messages read and the
rate between the first and the last message.

    python -m benchmarks.bare_read --subscription projects/p/subscriptions/s --events N
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

_seen = {"n": 0, "first": None, "last": None}
_lock = threading.Lock()


class _CountFn(beam.DoFn):
    """The no-op: counts what it is given, emits nothing."""

    def process(self, message):
        now = time.perf_counter()
        with _lock:
            _seen["n"] += 1
            _seen["first"] = _seen["first"] or now
            _seen["last"] = now


def measure(subscription: str, events: int, timeout: float, idle: float = 10.0) -> dict:
    """Runs the bare read until ``events`` arrive, or nothing arrives for ``idle`` s."""
    options = PipelineOptions([], runner="BundleBasedDirectRunner")
    options.view_as(StandardOptions).streaming = True
    p = beam.Pipeline(options=options)
    _ = (
        p
        | "ReadFromPubSub"
        >> beam.io.ReadFromPubSub(subscription=subscription, with_attributes=True)
        | "NoOp" >> beam.ParDo(_CountFn())
    )
    start = time.perf_counter()
    result = p.run()
    try:
        while time.perf_counter() - start < timeout:
            time.sleep(0.5)
            with _lock:
                n, last = _seen["n"], _seen["last"]
            if n >= events or (last and time.perf_counter() - last > idle):
                break
    finally:
        result.cancel()
    with _lock:
        n, first, last = _seen["n"], _seen["first"], _seen["last"]
    rate = (n - 1) / (last - first) if n > 1 and last > first else None
    return {
        "read": n,
        "events": events,
        "startup_s": round(first - start, 2) if first else None,
        "events_per_s": round(rate, 1) if rate else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscription", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--no_accelerate", action="store_true")
    parser.add_argument("--pubsub_pull_size", type=int, default=None)
    args = parser.parse_args(argv)
    if not args.no_accelerate:
        from local.accelerate import accelerate

        accelerate(args.pubsub_pull_size)
    print(json.dumps(measure(args.subscription, args.events, args.timeout)), flush=True)
    return 0


if __name__ == "__main__":
    # Run the importable module's copy: a DoFn class defined in __main__ would be
    # pickled by value, and its counts would go to a copy of ``_seen``.
    from benchmarks.bare_read import main as module_main

    code = module_main()
    sys.stdout.flush()
    os._exit(code)  # a cancelled DirectRunner can leave non-daemon threads behind
