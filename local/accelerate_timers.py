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
2. pops from the heaps the keys whose earliest timer is now due;
3. asks exactly those keys, in the keyed-state dict's order, for their
   expired timers with Beam's own ``get_timers``; then indexes only each
   asked key's timers that are not yet due. Its due timers are scheduled,
   and delivering one writes the key (Beam clears the timer through the
   key's state first), which re-summarises it (step 1).

A key whose timers are not all ``Timestamp``s or seconds in the two known
time domains is asked on every pass, as Beam does. So the fired timers, their order and the
"has a processing-time timer" answer are Beam's (tested against Beam's own
extraction on random timer tables), with one deliberate difference:

4. a timer whose firing is already scheduled and not yet delivered
   (``_fired_timers``, counted by value in ``OutstandingFirings``) is not
   reported again, and a key is not asked again while nothing about it
   changed. Beam reports a due timer on
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


def timer_summary(
    state: Any, after_watermark: int | None = None, after_now: int | None = None
) -> tuple[int | None, int | None, bool]:
    """(earliest event-time ns, earliest processing-time ns, unknown) of a key's timers.

    With ``after_watermark`` / ``after_now`` (ns), only the timers later than
    those count: the ones not yet expired on the pass that asked the key.
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
                if (realtime is None or nanos < realtime) and (
                    after_now is None or nanos > after_now
                ):
                    realtime = nanos
            elif domain == TimeDomain.WATERMARK:
                if (watermark is None or nanos < watermark) and (
                    after_watermark is None or nanos > after_watermark
                ):
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
        # key -> (generation, next event-time ns, next processing-time ns, has a
        # processing-time timer); "next": not yet reported on an earlier pass.
        self.entries: dict = {}
        self.unknown: set = set()  # keys asked on every pass
        self.due: set = set()  # keys with a due timer, until they are asked
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
            if old is not None and old[3]:
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
            if realtime is not None:
                self.realtime_keys += 1
            self._push(key, watermark, realtime, realtime is not None)
        self._compact()

    def asked(self, key: Any, state: Any, watermark_nanos: int, now_nanos: int) -> None:
        """A due key was asked on this pass: index only its timers that are not yet due.

        Each of its due timers is now scheduled (or already was), and delivering
        one writes the key's state (Beam clears a timer through the key's state
        before delivering it), which re-summarises the key. Until then, asking
        the key again on every pass would only find the same scheduled firings.
        """
        entry = self.entries.get(key)
        if entry is None or key not in self.due:
            return
        self.due.discard(key)
        watermark, realtime, _ = timer_summary(state, watermark_nanos, now_nanos)
        self._push(key, watermark, realtime, entry[3])

    def _push(self, key: Any, watermark: int | None, realtime: int | None, rt: bool) -> None:
        generation = next(self._generation)
        self.entries[key] = (generation, watermark, realtime, rt)
        if watermark is not None:
            heapq.heappush(self._watermark_heap, (watermark, generation, key))
        if realtime is not None:
            heapq.heappush(self._realtime_heap, (realtime, generation, key))

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

    def idle(self) -> bool:
        """No key is indexed, none was written since the last pass, none is due.

        Read without the lock: a write it misses is seen on the next pass.
        """
        return not (self.entries or self.dirty or self.unknown or self.due)

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


def _nanos(seconds: Any) -> int:
    """``Timestamp.of(seconds).nanos``, without building a Timestamp for a float."""
    if type(seconds) is float or type(seconds) is int:
        return int(seconds * 1_000_000) * 1000  # as Timestamp(seconds): micros
    from apache_beam.utils.timestamp import Timestamp

    return Timestamp.of(seconds).nanos


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


class OutstandingFirings(set):
    """A step's scheduled, not yet delivered ``TimerFiring``s, also counted by value.

    Beam keeps them in a plain set (``_fired_timers``: ``update`` when
    scheduled, ``remove`` when delivered), and ``TimerFiring`` compares by
    identity; ``scheduled`` ("is this timer already scheduled?"), ``has_key``
    ("is a timer of this key?") and ``windows_of`` answer without going
    through every outstanding firing on each pass, bundle or element.
    """

    def __init__(self, firings: Any = ()) -> None:
        super().__init__()
        self._ids: dict = {}  # firing id -> count
        self._keys: dict = {}  # encoded key -> {window -> count}
        self.update(firings)

    def scheduled(self, firing_id: tuple) -> bool:
        return firing_id in self._ids

    def has_key(self, encoded_key: Any) -> bool:
        return encoded_key in self._keys

    def windows_of(self, encoded_key: Any) -> frozenset:
        """The windows of this key's outstanding firings."""
        return frozenset(self._keys.get(encoded_key, ()))

    def _counts(self, firing: Any) -> tuple:
        windows = self._keys.setdefault(firing.encoded_key, {})
        return (self._ids, _firing_id(firing)), (windows, firing.window)

    def add(self, firing: Any) -> None:
        if firing not in self:
            super().add(firing)
            for counts, value in self._counts(firing):
                counts[value] = counts.get(value, 0) + 1

    def update(self, *others: Any) -> None:
        for other in others:
            for firing in other:
                self.add(firing)

    def discard(self, firing: Any) -> None:
        if firing in self:
            super().discard(firing)
            for counts, value in self._counts(firing):
                left = counts[value] - 1
                if left:
                    counts[value] = left
                else:
                    del counts[value]
            if not self._keys[firing.encoded_key]:
                del self._keys[firing.encoded_key]

    def remove(self, firing: Any) -> None:
        if firing not in self:
            raise KeyError(firing)
        self.discard(firing)

    def difference_update(self, *others: Any) -> None:
        for other in others:
            for firing in list(other):
                self.discard(firing)

    def clear(self) -> None:
        super().clear()
        self._ids.clear()
        self._keys.clear()


def outstanding_firings(watermarks: Any) -> OutstandingFirings:
    """A step's ``_fired_timers``, made an ``OutstandingFirings`` the first time.

    Call under ``watermarks._lock``. Beam only ``update``s and ``remove``s that
    set, which ``OutstandingFirings`` supports, so the swap is invisible to it.
    """
    fired = watermarks._fired_timers
    if not isinstance(fired, OutstandingFirings):
        fired = watermarks._fired_timers = OutstandingFirings(fired)
    return fired


def indexed_timers() -> None:
    """Timer extraction asks only the keys whose earliest timer is due."""
    from apache_beam.runners.direct.evaluation_context import EvaluationContext
    from apache_beam.runners.direct.watermark_manager import TimerFiring, _TransformWatermarks

    original_extract = _TransformWatermarks.extract_transform_timers
    original_init = EvaluationContext._initialize_keyed_states

    def _initialize_keyed_states(self, root_transforms, value_to_consumers):
        plain = original_init(self, root_transforms, value_to_consumers)
        return {transform: TrackedStates() for transform in plain}

    def extract_transform_timers(self):
        states = self._keyed_states
        if not isinstance(states, TrackedStates):
            return original_extract(self)
        index = states.timer_index
        if index.idle():  # most steps: no keyed state, nothing written, nothing due
            return [], False
        with self._lock:
            index.refresh(states)
            watermark = self._input_watermark
            now = self._clock.time()
            fired_timers = []
            has_realtime_timer = index.realtime_keys > 0
            now_nanos = _nanos(now)
            keys = index.due_keys(watermark.nanos, now_nanos)
            outstanding = outstanding_firings(self)
            for encoded_key in keys:
                state = dict.get(states, encoded_key)
                if state is None:
                    continue
                timers, had_realtime_timer = state.get_timers(
                    watermark=watermark, processing_time=now
                )
                index.asked(encoded_key, state, watermark.nanos, now_nanos)
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
                    if not outstanding.scheduled(_firing_id(firing)):  # not scheduled twice
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
