"""What assigning event time in ParseAndValidate (not at the source) does to lateness.

Runs the same stream through a fixed 60 s window (``allowed_lateness`` 120 s,
like configs/traffic.yaml) on the streaming DirectRunner with a TestStream,
under two watermark policies, and counts per element whether it was counted
on time, in a late pane, or dropped as too late (or dead-lettered):

- ``attribute`` (before): the source stamps elements with the event-time
  attribute and the watermark follows event time (Dataflow's Pub/Sub
  watermark with ``timestamp_attribute``: the oldest unacked event time).
- ``publish`` (after): the source stamps publish time and the watermark
  follows publish time (Dataflow without ``timestamp_attribute``);
  validation re-stamps each record with its event time and dead-letters
  events older than ``limits.max_event_age_seconds`` (default: the allowed
  lateness, 120 s) before its publish time.

Locally the legacy DirectRunner's Pub/Sub watermark is the wall clock under
both policies (``_PubSubReadEvaluator`` returns ``time.time()`` as its hold),
so a local run cannot tell them apart; this models the Dataflow watermark
instead. The stream: 10 events/s for 10 minutes of publish time, publish
delay 0-1 s; 2% of events 60 s late (run_local's simulator setting) and 1%
300 s late (beyond the allowed lateness).

    python -m benchmarks.event_time_lateness

Results are appended to ``benchmarks/results/event_time_lateness.jsonl``.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms import trigger, window

RESULTS = Path(__file__).resolve().parent / "results" / "event_time_lateness.jsonl"
T0 = 1_700_000_000.0
WINDOW, LATENESS, MAX_AGE = 60, 120, 120

# element id -> pane timing it was counted in (filled by the pipeline, in-process).
_COUNTED: dict[str, str] = {}


def events(seed: int = 7) -> list[tuple[str, float, float]]:
    """(id, event time, publish time), in publish order."""
    rng = random.Random(seed)
    out = []
    for i in range(6000):
        published = T0 + i / 10
        u = rng.random()
        skew = 300.0 if u < 0.01 else 60.0 if u < 0.03 else 0.0
        out.append((f"e{i}", published - skew - rng.random(), published))
    return out


def _stream(policy: str, evs: list[tuple[str, float, float]]) -> TestStream:
    stream = TestStream()
    watermark = T0 - 10
    stream = stream.advance_watermark_to(watermark)
    for start in range(0, len(evs), 10):  # one second of publishing at a time
        batch = evs[start : start + 10]
        if policy == "attribute":
            stream = stream.add_elements([window.TimestampedValue((i, e), e) for i, e, _ in batch])
            # The oldest event time of what is unacked now; never backwards.
            mark = min(e for _, e, _ in batch) - 1
        else:
            stream = stream.add_elements([window.TimestampedValue((i, e), p) for i, e, p in batch])
            mark = batch[0][2] - 1
        mark = round(mark, 3)  # TestStream watermarks are whole milliseconds
        if mark > watermark:
            watermark = mark
            stream = stream.advance_watermark_to(watermark)
    return stream.advance_watermark_to_infinity()


def _restamp(element, policy: str):
    element_id, event_time = element
    if policy == "publish":
        return [window.TimestampedValue(element_id, event_time)]
    return [element_id]


def _record(kv, pane=beam.DoFn.PaneInfoParam):
    for element_id in kv[1]:
        _COUNTED.setdefault(element_id, {1: "ON_TIME", 2: "LATE"}.get(pane.timing, "OTHER"))
    return kv


def run(policy: str) -> dict:
    """Counts of on-time, late and dropped elements under one policy."""
    evs = events()
    options = PipelineOptions(flags=[], runner="BundleBasedDirectRunner")
    options.view_as(StandardOptions).streaming = True
    _COUNTED.clear()
    dead = set()
    if policy == "publish":
        dead = {i for i, e, p in evs if p - e > MAX_AGE}
    p = beam.Pipeline(options=options)
    valid = (
        p
        | _stream(policy, evs)
        | beam.Filter(lambda el, dead=dead: el[0] not in dead)
        | beam.FlatMap(_restamp, policy)
        | beam.WindowInto(
            window.FixedWindows(WINDOW),
            trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
            accumulation_mode=trigger.AccumulationMode.DISCARDING,
            allowed_lateness=LATENESS,
        )
        | beam.Map(lambda i: ("k", i))
        | beam.GroupByKey()
        | beam.Map(_record)
    )
    del valid
    p.run().wait_until_finish()
    timings = [_COUNTED.get(i) for i, _, _ in evs if i not in dead]
    return {
        "policy": policy,
        "events": len(evs),
        "on_time": timings.count("ON_TIME"),
        "late_pane": timings.count("LATE"),
        "other_pane": timings.count("OTHER"),
        "dropped_silently": sum(1 for t in timings if t is None),
        "dead_lettered": len(dead),
    }


def main() -> int:
    results = [run("attribute"), run("publish")]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    with RESULTS.open("a", encoding="utf-8") as f:
        for r in results:
            f.write(json.dumps({"at": stamp, **r}) + "\n")
    for r in results:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    from benchmarks import event_time_lateness

    raise SystemExit(event_time_lateness.main())
