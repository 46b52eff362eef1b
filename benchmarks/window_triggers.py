"""Benchmark: per-event windowing work of the aggregates, direct vs from partials.

Drives Beam's own trigger driver (the code the local runner's windowed
GroupByKey runs per key) with on-time events, for the config's windows as
``transforms.aggregation.WindowAndAggregate`` builds them: every event into
every window (``partials=False``), or each event into one fixed partial
window whose per-key partials then feed the configured windows.

    python -m benchmarks.window_triggers [--config configs/traffic.yaml]
        [--keys 300] [--minutes 5] [--events-per-key-minute 60]

Prints one JSON object (microseconds of trigger-driver work per event). It
leaves out the runner's own per-bundle and per-key costs, and the combine.
"""

from __future__ import annotations

import argparse
import json
import time

from apache_beam.transforms import trigger, window
from apache_beam.transforms.core import Windowing
from apache_beam.transforms.trigger import InMemoryUnmergedState, create_trigger_driver
from apache_beam.transforms.window import WindowFn
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from dataset.config import load_config
from transforms.aggregation import (
    LATE_FIRING_DELAY_SECONDS,
    late_firing_trigger,
    partial_lateness,
    partial_period,
    window_fn,
)

T0 = 1_700_000_040


class _Clock:
    def time(self) -> float:
        return float(T0)


def _assign(fn, value, ts) -> WindowedValue:
    context = WindowFn.AssignContext(Timestamp.of(ts), element=value)
    return WindowedValue(value, ts, fn.assign(context))


def _run(stages: list[Windowing], keys: int, minutes: int, per_key: int) -> list[float]:
    """Feeds minute after minute of on-time events through chained stages; seconds per stage."""
    drivers = [create_trigger_driver(w, clock=_Clock()) for w in stages]
    states: list[dict] = [{} for _ in stages]
    spent = [0.0] * len(stages)
    for m in range(minutes):
        now = Timestamp.of(T0 + 60 * m)
        end = Timestamp.of(T0 + 60 * (m + 1))
        times = [T0 + 60 * m + 60 * i / per_key for i in range(per_key)]
        inputs = {
            k: [_assign(stages[0].windowfn, {"i": i}, t) for i, t in enumerate(times)]
            for k in range(keys)
        }
        for i, driver in enumerate(drivers):
            out = {}
            for k, values in inputs.items():
                state = states[i].setdefault(k, InMemoryUnmergedState())
                start = time.perf_counter()
                fired = list(driver.process_elements(state, values, now, now))
                for win, (name, domain, ts, _) in state.get_and_clear_timers(end):
                    fired.extend(driver.process_timer(win, name, domain, ts, state, end))
                spent[i] += time.perf_counter() - start
                if i + 1 < len(stages):
                    out[k] = [_assign(stages[i + 1].windowfn, f.value, f.timestamp) for f in fired]
            inputs = out
    return spent


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/traffic.yaml")
    parser.add_argument("--keys", type=int, default=300)
    parser.add_argument("--minutes", type=int, default=5)
    parser.add_argument("--events-per-key-minute", type=int, default=60)
    args = parser.parse_args(argv)
    config = load_config(args.config)
    late = late_firing_trigger(LATE_FIRING_DELAY_SECONDS)
    acc, dis = trigger.AccumulationMode.ACCUMULATING, trigger.AccumulationMode.DISCARDING

    def windowing(spec):
        return Windowing(window_fn(spec), late, acc, allowed_lateness=spec.allowed_lateness_seconds)

    events = args.keys * args.minutes * args.events_per_key_minute
    direct = sum(
        _run([windowing(s)], args.keys, args.minutes, args.events_per_key_minute)[0]
        for s in config.windows
    )
    partials = 0.0
    sliding = {s.period_seconds for s in config.windows if s.kind == "sliding"}
    for period in sorted(sliding):
        specs = [s for s in config.windows if partial_period(s) == period]
        first = Windowing(
            window.FixedWindows(period),
            trigger.AfterWatermark(late=trigger.AfterCount(1)),
            dis,
            allowed_lateness=partial_lateness(specs, period),
        )
        for i, spec in enumerate(specs):
            spent = _run(
                [first, windowing(spec)], args.keys, args.minutes, args.events_per_key_minute
            )
            partials += spent[1] + (spent[0] if i == 0 else 0.0)
    for spec in config.windows:
        if partial_period(spec) not in sliding:  # windowed directly either way
            partials += _run(
                [windowing(spec)], args.keys, args.minutes, args.events_per_key_minute
            )[0]
    result = {
        "config": args.config,
        "events": events,
        "keys": args.keys,
        "direct_us_per_event": round(direct / events * 1e6, 1),
        "partials_us_per_event": round(partials / events * 1e6, 1),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
