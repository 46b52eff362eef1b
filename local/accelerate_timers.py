"""Local-only timer index for Beam's legacy DirectRunner: find due timers without a scan.

On every scheduling pass (after every bundle, and in a loop while idle) Beam
2.77's ``_TransformWatermarks.extract_transform_timers`` asks every key ever
seen by every stateful step for its expired timers. With a few thousand keys
that pass was 65% of the pipeline's CPU at 300 events/s, even after it skipped
keys whose state had not changed (it still compared every key's earliest
timer with the watermark, in Python ``Timestamp`` arithmetic).

This patch keeps, per step, an index of each key's earliest event-time and
processing-time timer in two heaps (integer nanoseconds, as Beam compares them). A step's keyed
states become a ``TrackedStates`` dict, which records the keys written or
removed; the runner replaces a key's state object when a bundle commits it
(it never edits a committed state's timers in place), so a key's timers can
only change through such a write. A pass then:

1. re-summarises only the keys written since the last pass;
2. pops from the heaps the keys whose earliest timer is now due; a due key
   stays due until its state is written again (Beam extracts a due timer on
   every pass until the bundle that delivers it commits);
3. asks exactly those keys, in the keyed-state dict's order, for their
   expired timers with Beam's own ``get_timers``.

A key whose timers are not all ``Timestamp``s or seconds in the two known
time domains is asked on every pass, as Beam does. So the fired timers, their order and the
"has a processing-time timer" answer are Beam's (tested against Beam's own
extraction on random timer tables), with one deliberate difference:

4. a timer whose firing is already scheduled and not yet delivered
   (``_fired_timers``) is not reported again. Beam reports a due timer on
   every pass until the bundle that delivers it commits, and schedules each
   report as another bundle; when a stateful step's bundles queue up (a
   backlog), every pass adds another copy of every due timer, and each copy
   is delivered: work grows with the backlog, and a second delivery clears
   the timer its first delivery may have set again. Dataflow delivers a timer
   once; so does this.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from typing import Any

from local.patching import changed_sources
from local.patching import set_attr as _set

# sha256 of the Beam 2.77 methods this module replaces or relies on.
_SOURCE_SHA256 = {
    "_TransformWatermarks.extract_transform_timers": (
        "897adb07f063798e1ca059d8103f3f984e033c924da449b52b034c12a480e102"
    ),
    "EvaluationContext._initialize_keyed_states": (
        "2bd79425fff62c5100d7a63c720b0b47a267cdb23e50aaca0ac5e61008511903"
    ),
    "InMemoryUnmergedState.get_timers": (
        "bfeaafd1883ed3460b4985939791e433b7ed0ceeb335b1bc8156035a818e81e9"
    ),
}


def timer_summary(state: Any) -> tuple[int | None, int | None, bool]:
    """(earliest event-time ns, earliest processing-time ns, unknown) of a key's timers.

    ``unknown`` is True when the timers are not a dict of ``Timestamp``s (or
    plain seconds) in the WATERMARK and REAL_TIME domains; such a key is asked
    on every pass.
    """
    from apache_beam.transforms.trigger import TimeDomain
    from apache_beam.utils.timestamp import Timestamp

    timers = getattr(state, "timers", None)
    if not isinstance(timers, dict):
        return None, None, True
    watermark = realtime = None
    for per_window in timers.values():
        for (_, domain, _), timestamp in per_window.items():
            kind = type(timestamp)
            if kind is Timestamp:
                nanos = timestamp.nanos
            elif kind is float or kind is int:  # a user timer set to time.time() + s
                nanos = Timestamp.of(timestamp).nanos  # as Beam's comparison converts it
            else:
                return None, None, True
            if domain == TimeDomain.REAL_TIME:
                if realtime is None or nanos < realtime:
                    realtime = nanos
            elif domain == TimeDomain.WATERMARK:
                if watermark is None or nanos < watermark:
                    watermark = nanos
            else:
                return None, None, True
    return watermark, realtime, False


class TimerIndex:
    """Earliest timers per key of one step, with heaps to find the due keys."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.dirty: set = set()  # keys written or removed since the last refresh
        self.order: dict = {}  # key -> position in the keyed-state dict
        self.entries: dict = {}  # key -> (generation, event-time ns, processing-time ns)
        self.unknown: set = set()  # keys asked on every pass
        self.due: set = set()  # keys with a due timer, until their state is written
        self.realtime_keys = 0  # keys with a processing-time timer
        self._watermark_heap: list = []  # (ns, generation, key)
        self._realtime_heap: list = []
        self._generation = itertools.count()
        self._position = itertools.count()

    def written(self, key: Any, new: bool) -> None:
        with self.lock:
            if new:
                self.order[key] = next(self._position)
            self.dirty.add(key)

    def removed(self, key: Any) -> None:
        with self.lock:
            self.dirty.add(key)

    def refresh(self, states: dict) -> None:
        """Re-summarises the keys written or removed since the last refresh."""
        with self.lock:
            dirty, self.dirty = self.dirty, set()
        for key in dirty:
            old = self.entries.pop(key, None)
            if old is not None and old[2] is not None:
                self.realtime_keys -= 1
            self.due.discard(key)
            self.unknown.discard(key)
            state = dict.get(states, key)
            if state is None:
                self.order.pop(key, None)
                continue
            watermark, realtime, unknown = timer_summary(state)
            if unknown:
                self.unknown.add(key)
                continue
            generation = next(self._generation)
            self.entries[key] = (generation, watermark, realtime)
            if watermark is not None:
                heapq.heappush(self._watermark_heap, (watermark, generation, key))
            if realtime is not None:
                self.realtime_keys += 1
                heapq.heappush(self._realtime_heap, (realtime, generation, key))
        self._compact()

    def due_keys(self, watermark_nanos: int, now_nanos: int) -> list:
        """Keys that may have an expired timer, in keyed-state dict order."""
        for heap, limit in (
            (self._watermark_heap, watermark_nanos),
            (self._realtime_heap, now_nanos),
        ):
            while heap and heap[0][0] <= limit:
                _, generation, key = heapq.heappop(heap)
                entry = self.entries.get(key)
                if entry is not None and entry[0] == generation:
                    self.due.add(key)
        keys = self.due | self.unknown
        if len(keys) > 1:
            return sorted(keys, key=self.order.__getitem__)
        return list(keys)

    def heap_size(self) -> int:
        """Entries in the two heaps, superseded ones included."""
        return len(self._watermark_heap) + len(self._realtime_heap)

    def _compact(self) -> None:
        """Drops superseded heap entries once they outnumber the live ones."""
        live = len(self.entries)
        for name, slot in (("_watermark_heap", 1), ("_realtime_heap", 2)):
            heap = getattr(self, name)
            if len(heap) > 2 * live + 1024:
                fresh = [
                    (entry[slot], entry[0], key)
                    for key, entry in self.entries.items()
                    if entry[slot] is not None and key not in self.due
                ]
                heapq.heapify(fresh)
                setattr(self, name, fresh)


class TrackedStates(dict):
    """A step's keyed states (encoded key -> state) that tell a ``TimerIndex`` what changed.

    The runner writes this dict with ``d[k] = v`` and ``del d[k]`` (and the
    local state patches with ``del``); the other mutators are routed through
    those two so no write goes unseen.
    """

    def __init__(self) -> None:
        super().__init__()
        self.timer_index = TimerIndex()

    def __setitem__(self, key: Any, value: Any) -> None:
        new = key not in self
        super().__setitem__(key, value)
        self.timer_index.written(key, new)

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(key)
        self.timer_index.removed(key)

    def pop(self, key: Any, *default: Any) -> Any:
        if key in self:
            value = self[key]
            del self[key]
            return value
        if default:
            return default[0]
        raise KeyError(key)

    def popitem(self) -> tuple:
        key = next(reversed(self))
        return key, self.pop(key)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def clear(self) -> None:
        for key in list(self):
            del self[key]

    def __ior__(self, other: Any) -> TrackedStates:
        self.update(other)
        return self


def _firing_id(firing: Any) -> tuple:
    """What makes two timer firings the same timer (``TimerFiring`` compares by identity)."""
    return (
        firing.encoded_key,
        firing.window,
        firing.name,
        firing.time_domain,
        firing.timestamp,
        firing.dynamic_timer_tag,
    )


def indexed_timers() -> None:
    """Timer extraction asks only the keys whose earliest timer is due."""
    from apache_beam.runners.direct.evaluation_context import EvaluationContext
    from apache_beam.runners.direct.watermark_manager import TimerFiring, _TransformWatermarks
    from apache_beam.utils.timestamp import Timestamp

    original_extract = _TransformWatermarks.extract_transform_timers
    original_init = EvaluationContext._initialize_keyed_states

    def _initialize_keyed_states(self, root_transforms, value_to_consumers):
        plain = original_init(self, root_transforms, value_to_consumers)
        return {transform: TrackedStates() for transform in plain}

    def extract_transform_timers(self):
        states = self._keyed_states
        if not isinstance(states, TrackedStates):
            return original_extract(self)
        with self._lock:
            index = states.timer_index
            index.refresh(states)
            watermark = self._input_watermark
            now = self._clock.time()
            fired_timers = []
            has_realtime_timer = index.realtime_keys > 0
            keys = index.due_keys(watermark.nanos, Timestamp.of(now).nanos)
            # Firings scheduled but not yet delivered: only needed when a key is due
            # (most passes, e.g. while the monitor loops idle, have none).
            outstanding = {_firing_id(f) for f in self._fired_timers} if keys else ()
            for encoded_key in keys:
                state = dict.get(states, encoded_key)
                if state is None:
                    continue
                timers, had_realtime_timer = state.get_timers(
                    watermark=watermark, processing_time=now
                )
                if had_realtime_timer:
                    has_realtime_timer = True
                for expired in timers:
                    window, (name, time_domain, timestamp, dynamic_timer_tag) = expired
                    firing = TimerFiring(
                        encoded_key,
                        window,
                        name,
                        time_domain,
                        timestamp,
                        dynamic_timer_tag=dynamic_timer_tag,
                    )
                    if _firing_id(firing) not in outstanding:  # not scheduled twice
                        fired_timers.append(firing)
            self._fired_timers.update(fired_timers)
            return fired_timers, has_realtime_timer

    _set(EvaluationContext, "_initialize_keyed_states", _initialize_keyed_states)
    _set(_TransformWatermarks, "extract_transform_timers", extract_transform_timers)


def check_internals() -> list[str]:
    """What changed in the Beam internals this patch relies on (empty: none)."""
    from apache_beam.runners.direct.evaluation_context import EvaluationContext
    from apache_beam.runners.direct.watermark_manager import _TransformWatermarks
    from apache_beam.transforms.trigger import InMemoryUnmergedState

    owners = {
        "_TransformWatermarks": _TransformWatermarks,
        "EvaluationContext": EvaluationContext,
        "InMemoryUnmergedState": InMemoryUnmergedState,
    }
    return changed_sources(owners, _SOURCE_SHA256, "local.accelerate_timers")
