"""Benchmark: what the local (legacy DirectRunner) runner retains per stateful step.

Runs two TestStream graphs through the project's real transforms on the
bundle-based DirectRunner, with and without ``local.accelerate``'s state
patches (``forget_empty_keys``, ``expired_window_gc``), and reports what the
runner still holds per step once the stream has ended:

- ``dedup``: ``--ids`` distinct message ids through ``DeduplicateMessages``;
  processing time then advances past the dedup window, so every id's expiry
  timer fires and its state is cleared.
- ``aggregate``: ``--keys`` keys, one record per key per minute for
  ``--minutes`` minutes (plus a late record per minute, within the allowed
  lateness) through ``WindowAndAggregate`` with the config's windows; the
  watermark advances minute by minute, and processing time past each late
  firing delay.

Per step it counts keys in the runner's keyed states, windows in their
trigger state (``window_ids``) and state cells, and tracemalloc's bytes still
allocated while the pipeline result is alive (``retained_kib``):

    python -m benchmarks.state_memory [--ids 3000] [--keys 20] [--minutes 60]

Results are appended to ``benchmarks/results/state_memory.jsonl``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import platform
import tracemalloc
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms.window import TimestampedValue

from dataset.config import DatasetConfig, load_config
from transforms.aggregation import LATE_FIRING_DELAY_SECONDS, WindowAndAggregate
from transforms.ingestion import DeduplicateMessages

RESULTS = Path(__file__).resolve().parent / "results" / "state_memory.jsonl"
T0 = 1_700_000_040.0  # a minute boundary
DEDUP_WINDOW_SECONDS = 60
STATE_PATCHES = ("forget_empty_keys", "expired_window_gc")


def _options() -> PipelineOptions:
    options = PipelineOptions(flags=[], runner="BundleBasedDirectRunner")
    options.view_as(StandardOptions).streaming = True
    return options


def dedup_stream(ids: int, per_bundle: int = 50) -> TestStream:
    """``ids`` distinct messages, then processing time past the dedup window."""
    stream = TestStream().advance_watermark_to(T0)
    for start in range(0, ids, per_bundle):
        batch = [
            TimestampedValue(PubsubMessage(b"{}", {"message_id": f"m{i}"}), T0)
            for i in range(start, min(ids, start + per_bundle))
        ]
        stream = stream.add_elements(batch).advance_processing_time(0.01)
    stream = stream.advance_processing_time(DEDUP_WINDOW_SECONDS + 1)
    # Something after the expiry, so the runner commits the timers' bundles.
    stream = stream.add_elements([TimestampedValue(PubsubMessage(b"{}", {"message_id": "x"}), T0)])
    return stream.advance_processing_time(DEDUP_WINDOW_SECONDS + 1).advance_watermark_to_infinity()


def _record(config: DatasetConfig, key: str, t: float, i: int) -> dict[str, Any]:
    features: dict[str, Any] = {}
    for f in config.features:
        if f.values:
            features[f.name] = f.values[0]
        else:
            lo = f.min if f.min is not None else 0.0
            hi = f.max if f.max is not None else lo + 10.0
            features[f.name] = lo + (hi - lo) * ((i % 7) / 7)
    return {
        "kind": "features",
        "message_id": f"{key}@{t}",
        "key": key,
        "event_time": t,
        "features": features,
        "label": i % 2 if config.label.source == "inline" else None,
        "join_id": None,
    }


def aggregate_stream(config: DatasetConfig, keys: int, minutes: int) -> TestStream:
    """One record per key per minute and one late record per minute."""
    # Processing time starts past the events, as a real clock would be.
    stream = TestStream().advance_processing_time(T0 + 3600).advance_watermark_to(T0)
    for m in range(minutes):
        t = T0 + m * 60
        batch = [
            TimestampedValue(_record(config, f"k{k}", t + k % 60, m), t + k % 60)
            for k in range(keys)
        ]
        if m >= 2:  # late, within the allowed lateness of a closed window
            late_t = t - 90
            batch.append(TimestampedValue(_record(config, "k0", late_t, m), late_t))
        stream = (
            stream.add_elements(batch)
            .advance_watermark_to(t + 60)
            .advance_processing_time(LATE_FIRING_DELAY_SECONDS + 1)
        )
    return stream.advance_watermark_to_infinity()


_COUNT: list[int] = []


def _count(_: Any) -> None:
    _COUNT.append(1)


def runner_retention(result: Any) -> dict[str, dict[str, int]]:
    """Per step with keyed state: keys, windows (trigger state) and state cells."""
    ctx = result._evaluation_context
    out = {}
    for applied, states in ctx._transform_keyed_states.items():
        if not states:
            continue
        windows = cells = timers = 0
        for state in states.values():
            windows += len(getattr(state, "global_state", {}).get("window_ids", {}) or {})
            cells += sum(len(tags) for tags in getattr(state, "state", {}).values())
            timers += sum(len(t) for t in getattr(state, "timers", {}).values())
        out[applied.full_label] = {
            "keys": len(states),
            "windows": windows,
            "cells": cells,
            "timers": timers,
        }
    return out


def run_graph(scenario: str, args: argparse.Namespace, patched: bool) -> dict[str, Any]:
    """Runs one scenario; what the runner holds afterwards and the bytes retained."""
    from local import accelerate

    accelerate.restore()
    if patched:
        accelerate.accelerate(patches=STATE_PATCHES)
    try:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        p = beam.Pipeline(options=_options())
        if scenario == "dedup":
            out = (
                p
                | dedup_stream(args.ids)
                | DeduplicateMessages("message_id", DEDUP_WINDOW_SECONDS, clock=lambda: 0.0)
            )
        else:
            config = load_config(args.config)
            out = p | aggregate_stream(config, args.keys, args.minutes) | WindowAndAggregate(config)
        _ = out | beam.Map(_count)
        _COUNT.clear()
        result = p.run()
        result.wait_until_finish()
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        return {
            "outputs": len(_COUNT),
            "retained_kib": round(retained / 1024),
            "steps": runner_retention(result),
        }
    finally:
        accelerate.restore()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=3000)
    parser.add_argument("--keys", type=int, default=20)
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--config", default="configs/traffic.yaml")
    parser.add_argument("--scenario", choices=["dedup", "aggregate", "both"], default="both")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    scenarios = ["dedup", "aggregate"] if args.scenario == "both" else [args.scenario]
    record: dict[str, Any] = {
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "params": {"ids": args.ids, "keys": args.keys, "minutes": args.minutes},
    }
    for scenario in scenarios:
        for patched in (False, True):
            name = f"{scenario}/{'patched' if patched else 'stock'}"
            record[name] = run_graph(scenario, args, patched)
            print(name, json.dumps(record[name]), flush=True)
    if not args.no_save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    # Run the module's own copy, so the pipeline's functions pickle by reference
    # (under __main__ they would pickle by value, with a copy of ``_COUNT``).
    from benchmarks.state_memory import main as _main

    _main()
