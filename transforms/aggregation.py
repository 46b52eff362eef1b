"""Per-key windowed aggregates of the numeric features, late data included.

Each configured window (fixed or sliding) fires once when the watermark
passes its end (ON_TIME). Late elements that arrive within the allowed
lateness are throttled, as in Beam's ``leader_board.py``: the first late
element of a window starts a processing-time delay
(``LATE_FIRING_DELAY_SECONDS``), and one LATE pane then carries every late
element that arrived meanwhile. Panes accumulate: every row is the full,
updated aggregate for its window, and ``pane_timing`` / ``pane_index`` say
which firing it is. Downstream readers take the row with the highest
``pane_index`` per key and window.

Sliding windows (size S every P seconds, P dividing S) are combined from
per-key partials over aligned fixed windows of P seconds, and a fixed window
of size P shares them: each event is windowed once instead of once per
overlapping window. The partial windows discard what they emitted and pass
late elements on at once, so the windows combined from them see the same
data at the same moments and make the same rows (tested against windowing
every event directly, ``partials=False``). Their lateness reaches the
latest-ending window that can still take a late element.

A backlog: on Dataflow the watermark follows the oldest unread event, so a
backlog is processed on time and only delays the ON_TIME panes. Where the
watermark follows the wall clock (the local runner), backlogged events are
late: within a window's allowed lateness they update it in throttled LATE
panes; beyond it they are dropped from the aggregates (Beam drops them
silently; they still reach training, predictions and triggers).
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger, window

from dataset.config import DatasetConfig, WindowSpec
from dataset.times import utc_iso
from transforms.validation import Record

NAMESPACE = "aggregation"
# Processing-time delay between a window's first late element and its LATE
# pane: at most one late row per key and window per delay, however many late
# elements arrive (a backlog on a wall-clock watermark makes every one late).
LATE_FIRING_DELAY_SECONDS = 30

# Accumulator: [count, labeled_count, label_sum, {feature: [n, sum, sumsq, min, max]}]
Accumulator = list


def empty_accumulator(feature_names: tuple[str, ...]) -> Accumulator:
    return [0, 0, 0.0, {f: [0, 0.0, 0.0, math.inf, -math.inf] for f in feature_names}]


def add_record(acc: Accumulator, record: Record) -> Accumulator:
    """Adds one record's numeric features (and inline label) to ``acc``."""
    acc[0] += 1
    if record.get("label") is not None:
        acc[1] += 1
        acc[2] += float(record["label"])
    for name, stats in acc[3].items():
        value = record["features"].get(name)
        if value is None:
            continue
        value = float(value)
        stats[0] += 1
        stats[1] += value
        stats[2] += value * value
        stats[3] = min(stats[3], value)
        stats[4] = max(stats[4], value)
    return acc


def merge_accumulators(accs: list[Accumulator], feature_names: tuple[str, ...]) -> Accumulator:
    out = empty_accumulator(feature_names)
    for acc in accs:
        out[0] += acc[0]
        out[1] += acc[1]
        out[2] += acc[2]
        for name, stats in acc[3].items():
            o = out[3][name]
            o[0] += stats[0]
            o[1] += stats[1]
            o[2] += stats[2]
            o[3] = min(o[3], stats[3])
            o[4] = max(o[4], stats[4])
    return out


def summarize(acc: Accumulator, with_label: bool) -> dict[str, Any]:
    """Turns an accumulator into the aggregate columns (mean/min/max/std per feature)."""
    out: dict[str, Any] = {"event_count": acc[0]}
    for name, (n, total, sumsq, lo, hi) in acc[3].items():
        if n == 0:
            out.update({f"{name}_mean": None, f"{name}_min": None, f"{name}_max": None})
            out[f"{name}_std"] = None
            continue
        mean = total / n
        var = max(sumsq / n - mean * mean, 0.0)
        out.update(
            {
                f"{name}_mean": mean,
                f"{name}_min": lo,
                f"{name}_max": hi,
                f"{name}_std": math.sqrt(var),
            }
        )
    if with_label:
        out["labeled_count"] = acc[1]
        out["label_mean"] = acc[2] / acc[1] if acc[1] else None
    return out


class FeatureStatsFn(beam.CombineFn):
    """Count, label rate and numeric feature statistics of a key's records."""

    def __init__(self, feature_names: tuple[str, ...], with_label: bool):
        self._names = feature_names
        self._with_label = with_label

    def create_accumulator(self):
        return empty_accumulator(self._names)

    def add_input(self, acc, record):
        return add_record(acc, record)

    def merge_accumulators(self, accs):
        return merge_accumulators(list(accs), self._names)

    def extract_output(self, acc):
        return summarize(acc, self._with_label)


class PartialStatsFn(FeatureStatsFn):
    """Like ``FeatureStatsFn``, but outputs the accumulator: a window's partial."""

    def __init__(self, feature_names: tuple[str, ...]):
        super().__init__(feature_names, with_label=True)

    def extract_output(self, acc):
        return acc


class MergedStatsFn(FeatureStatsFn):
    """Combines partials (accumulators) into the aggregate columns."""

    def add_input(self, acc, partial):
        return merge_accumulators([acc, partial], self._names)


def partial_period(spec: WindowSpec) -> int | None:
    """The fixed-window size whose partials add up to ``spec``'s windows, or None.

    A fixed window is its own partial; a sliding window of size S every P
    seconds is the union of S / P aligned fixed windows of P seconds, when P
    divides S.
    """
    if spec.kind == "fixed":
        return spec.size_seconds
    if spec.size_seconds % spec.period_seconds == 0:
        return spec.period_seconds
    return None


def partial_lateness(specs: list[WindowSpec], period: int) -> int:
    """Lateness of the partial windows: a late element must reach every window
    that still accepts it, up to the latest-ending window that holds it."""
    return max(s.allowed_lateness_seconds + s.size_seconds for s in specs) - period


def pane_timing(pane) -> str:
    """A pane's firing as the string the tables store (EARLY, ON_TIME, LATE)."""
    return {0: "EARLY", 1: "ON_TIME", 2: "LATE"}.get(pane.timing, "UNKNOWN")


def late_firing_trigger(delay_seconds: int) -> trigger.TriggerFn:
    """ON_TIME at the window's end, then one LATE pane per ``delay_seconds`` with late data."""
    return trigger.AfterWatermark(late=trigger.AfterProcessingTime(delay_seconds))


def window_fn(spec: WindowSpec):
    if spec.kind == "fixed":
        return window.FixedWindows(spec.size_seconds)
    return window.SlidingWindows(spec.size_seconds, spec.period_seconds)


class _FormatAggregateFn(beam.DoFn):
    """Adds key, window bounds and pane information to a combined aggregate."""

    def __init__(self, key_field: str, window_name: str):
        self._key_field = key_field
        self._window_name = window_name
        self._rows = Metrics.counter(NAMESPACE, "aggregate_rows")
        self._late_rows = Metrics.counter(NAMESPACE, "late_pane_rows")

    def process(
        self,
        element,
        win=beam.DoFn.WindowParam,
        pane=beam.DoFn.PaneInfoParam,
    ):
        key, stats = element
        timing = pane_timing(pane)
        self._rows.inc()
        if timing == "LATE":
            self._late_rows.inc()
        yield {
            self._key_field: key,
            "window_name": self._window_name,
            "window_start": utc_iso(float(win.start)),
            "window_end": utc_iso(float(win.end)),
            "pane_timing": timing,
            "pane_index": pane.index,
            "is_last_pane": pane.is_last,
            **stats,
            "computed_at": utc_iso(dt.datetime.now(dt.UTC).timestamp()),
        }


class WindowAndAggregate(beam.PTransform):
    """Feature records -> one aggregate row per key, window and pane, for every window."""

    def __init__(
        self,
        config: DatasetConfig,
        late_firing_delay_seconds: int = LATE_FIRING_DELAY_SECONDS,
        partials: bool = True,
    ):
        """Args:
        config: the dataset config (its ``windows``).
        late_firing_delay_seconds: see ``LATE_FIRING_DELAY_SECONDS``.
        partials: combine windows from fixed-window partials where they can
            be (same rows, less work per event); False windows every event
            into every window directly.
        """
        super().__init__()
        if late_firing_delay_seconds <= 0:
            raise ValueError(
                f"late_firing_delay_seconds must be positive, got {late_firing_delay_seconds}"
            )
        self._config = config
        self._late_delay = late_firing_delay_seconds
        self._partials = partials

    def expand(self, records):
        cfg = self._config
        names = tuple(f.name for f in cfg.numeric_features)
        with_label = cfg.label.source == "inline"
        keyed = records | "KeyByEntity" >> beam.Map(lambda r: (r["key"], r))
        # Partials pay off where sliding windows overlap; a fixed window of the
        # same size shares them, other fixed windows window events directly.
        sliding_periods = {s.period_seconds for s in cfg.windows if s.kind == "sliding"}
        by_period: dict[int, list[WindowSpec]] = {}
        for spec in cfg.windows:
            period = partial_period(spec) if self._partials else None
            if period in sliding_periods:
                by_period.setdefault(period, []).append(spec)
        partials = {}
        for period, specs in sorted(by_period.items()):
            # Per key, each event lands in ONE fixed window here. ON_TIME: one
            # partial per key and period. Late elements pass on at once as
            # deltas (discarding): the windows below throttle their panes.
            partials[period] = (
                keyed
                | f"PartialWindow{period}s"
                >> beam.WindowInto(
                    window.FixedWindows(period),
                    trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
                    accumulation_mode=trigger.AccumulationMode.DISCARDING,
                    allowed_lateness=partial_lateness(specs, period),
                )
                | f"PartialAggregate{period}s" >> beam.CombinePerKey(PartialStatsFn(names))
            )
        outputs = []
        for spec in cfg.windows:
            tag = "".join(part.capitalize() for part in spec.name.split("_"))
            period = partial_period(spec) if self._partials else None
            if period not in partials:
                period = None
            source = keyed if period is None else partials[period]
            combine = FeatureStatsFn if period is None else MergedStatsFn
            rows = (
                source
                | f"Window{tag}"
                >> beam.WindowInto(
                    window_fn(spec),
                    trigger=late_firing_trigger(self._late_delay),
                    accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
                    allowed_lateness=spec.allowed_lateness_seconds,
                )
                | f"Aggregate{tag}" >> beam.CombinePerKey(combine(names, with_label))
                | f"FormatAggregates{tag}"
                >> beam.ParDo(_FormatAggregateFn(cfg.key_field, spec.name))
                # Rows from differently windowed branches meet in one sink.
                | f"Rewindow{tag}" >> beam.WindowInto(window.GlobalWindows())
            )
            outputs.append(rows)
        if len(outputs) == 1:
            return outputs[0]
        return outputs | "FlattenWindows" >> beam.Flatten()
