"""local.accelerate_timers: the timer index fires exactly what Beam's scan fires."""

from __future__ import annotations

import random
from typing import Any

import pytest
from apache_beam.runners.direct import clock as beam_clock
from apache_beam.runners.direct.watermark_manager import _TransformWatermarks
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.trigger import InMemoryUnmergedState
from apache_beam.utils.timestamp import Timestamp

from local import accelerate as acc
from local import accelerate_timers as at

pytestmark = pytest.mark.usefixtures("unpatched_runner")


def test_internals_the_index_relies_on_are_unchanged():
    assert at.check_internals() == []


def test_a_changed_internal_is_reported(monkeypatch):
    def get_timers(self, clear=False, watermark=None, processing_time=None):
        return [], False  # stands in for a new Beam version's method

    monkeypatch.setattr(InMemoryUnmergedState, "get_timers", get_timers)
    assert any("get_timers" in p for p in acc.check_beam_internals())


def _random_state(rng: random.Random, base: float) -> InMemoryUnmergedState:
    state = InMemoryUnmergedState()
    for _ in range(rng.randint(0, 3)):
        window = rng.randint(0, 4)
        domain = rng.choice([TimeDomain.WATERMARK, TimeDomain.REAL_TIME])
        # Nanosecond-precision timestamps too: the index must compare as Beam does.
        timestamp = Timestamp(base + rng.uniform(-5, 30))
        if rng.random() < 0.1:  # a user timer set to time.time() + s
            timestamp = base + rng.uniform(-5, 30)
        elif rng.random() < 0.2:
            nanos = rng.randint(0, 10**9 - 1)
            timestamp = Timestamp(seconds=int(base), subseconds=nanos, precision=9)
        state.set_timer(window, f"t{rng.randint(0, 2)}", domain, timestamp)
    return state


def _watermarks(states: dict, clock: beam_clock.TestClock) -> _TransformWatermarks:
    return _TransformWatermarks(clock, states, "Step")


def _firing_tuple(t) -> tuple:
    return (t.encoded_key, t.window, t.name, t.time_domain, t.timestamp)


def _deliver(firing, marks: _TransformWatermarks, *dicts: dict) -> None:
    """As the runner delivers a firing: clear it through a copy of the key's state,
    commit that copy, then mark the firing delivered."""
    key = firing.encoded_key
    if key in dicts[0]:
        state = dicts[0][key].copy()
        state.clear_timer(firing.window, firing.name, firing.time_domain)
        for d in dicts:
            d[key] = state
    marks.update_timers([firing])


@pytest.mark.parametrize("seed", range(8))
def test_index_fires_what_beams_scan_fires_through_random_changes(seed):
    """Same firings as Beam's scan, except those still scheduled (not reported twice).

    Deliveries lag: a firing stays scheduled for a random number of passes (a
    stateful step's queued bundles), as in a backlog.
    """
    rng = random.Random(seed)
    base = 1_700_000_000.0
    clock = beam_clock.TestClock(Timestamp(base))
    plain: dict = {}
    tracked = at.TrackedStates()
    beams = _watermarks(plain, clock)
    at.indexed_timers()
    indexed = _watermarks(tracked, clock)
    watermark = Timestamp(base - 10)
    pending: list = []  # (pass to deliver at, firing) scheduled by the index
    checked_with_fired = checked_with_pending = 0
    for step in range(300):
        for _ in range(rng.randint(1, 4)):  # several changes between two passes
            action = rng.random()
            key = f"k{rng.randint(0, 40)}".encode()
            if action < 0.5:  # a bundle commits a new state object for the key
                state = _random_state(rng, base + step * 0.1)
                plain[key] = state
                tracked[key] = state
            elif action < 0.7 and key in plain:  # a key is forgotten
                del plain[key]
                del tracked[key]
            elif action < 0.85:
                watermark = Timestamp(watermark.micros / 1e6 + rng.uniform(0, 1))
            else:
                clock.advance_time(rng.uniform(0, 1))
        for due in [p for p in pending if p[0] <= step]:  # queued bundles deliver
            pending.remove(due)
            _deliver(due[1], indexed, plain, tracked)
        beams._input_watermark = indexed._input_watermark = watermark
        scheduled = {_firing_tuple(f) for _, f in pending}
        beam_timers, beam_realtime = beams.extract_transform_timers()
        beams.update_timers(beam_timers)
        expected = [_firing_tuple(t) for t in beam_timers]
        fired, has_realtime = indexed.extract_transform_timers()
        assert ([_firing_tuple(t) for t in fired], has_realtime) == (
            [t for t in expected if t not in scheduled],
            beam_realtime,
        ), step
        checked_with_fired += bool(fired)
        checked_with_pending += any(t in scheduled for t in expected)
        pending.extend((step + rng.choice([0, 0, 1, 3, 8]), f) for f in fired)
        # Keyed-state order is Beam's dict order, deletions and re-insertions included.
        assert list(tracked) == list(plain)
    assert checked_with_fired > 20  # the comparison saw real firings, not only empty passes
    assert checked_with_pending > 5  # and firings Beam would have scheduled twice


def test_only_keys_written_since_the_last_pass_are_summarised(monkeypatch):
    calls = []
    summary = at.timer_summary

    def counted(state, *bounds):
        if not bounds:  # a whole key's summary, not a re-index of an asked key
            calls.append(state)
        return summary(state, *bounds)

    monkeypatch.setattr(at, "timer_summary", counted)
    at.indexed_timers()
    clock = beam_clock.TestClock(Timestamp(100))
    states = at.TrackedStates()
    for i in range(50):
        state = InMemoryUnmergedState()
        state.set_timer(None, "gc", TimeDomain.WATERMARK, Timestamp(1000 + i))
        states[f"k{i}".encode()] = state
    marks = _watermarks(states, clock)
    marks._input_watermark = Timestamp(500)
    assert marks.extract_transform_timers() == ([], False)
    assert len(calls) == 50
    assert marks.extract_transform_timers() == ([], False)
    assert len(calls) == 50  # nothing written: nothing re-read
    states[b"k3"] = InMemoryUnmergedState()
    marks._input_watermark = Timestamp(1010)
    fired, _ = marks.extract_transform_timers()
    assert len(calls) == 51
    assert sorted(t.encoded_key for t in fired) == sorted(
        f"k{i}".encode() for i in range(11) if i != 3
    )


def test_superseded_heap_entries_are_compacted():
    at.indexed_timers()
    states = at.TrackedStates()
    marks = _watermarks(states, beam_clock.TestClock(Timestamp(100)))
    marks._input_watermark = Timestamp(0)
    for round_ in range(200):
        for i in range(20):
            state = InMemoryUnmergedState()
            state.set_timer(None, "gc", TimeDomain.WATERMARK, Timestamp(10_000 + round_))
            states[f"k{i}".encode()] = state
        marks.extract_transform_timers()
    assert states.timer_index.heap_size() <= 2 * 20 + 1024


def test_every_dict_mutator_is_seen_by_the_index():
    states = at.TrackedStates()
    state = InMemoryUnmergedState()
    state.set_timer(None, "t", TimeDomain.WATERMARK, Timestamp(5))
    states.update({b"a": state})
    states.setdefault(b"b", state)
    states |= {b"c": state}
    index = states.timer_index
    index.refresh(states)
    assert sorted(index.entries) == [b"a", b"b", b"c"]
    states.pop(b"a")
    states.popitem()
    index.refresh(states)
    assert sorted(index.entries) == [b"b"]
    states.clear()
    index.refresh(states)
    assert index.entries == {} and index.order == {}


def test_a_timer_scheduled_but_not_yet_delivered_is_not_reported_again():
    at.indexed_timers()
    states = at.TrackedStates()
    state = InMemoryUnmergedState()
    state.set_timer(None, "user/expiry", TimeDomain.WATERMARK, Timestamp(10))
    states[b"k"] = state
    marks = _watermarks(states, beam_clock.TestClock(Timestamp(100)))
    marks._input_watermark = Timestamp(20)
    first, _ = marks.extract_transform_timers()
    assert [(t.encoded_key, t.timestamp) for t in first] == [(b"k", Timestamp(10))]
    # Its bundle is still queued: Beam would report (and schedule) it again on every pass.
    assert marks.extract_transform_timers() == ([], False)
    assert marks.extract_transform_timers() == ([], False)
    # Delivered: the bundle cleared it, and its callback set it again (same time).
    _deliver(first[0], marks, states)
    states[b"k"].set_timer(None, "user/expiry", TimeDomain.WATERMARK, Timestamp(10))
    again, _ = marks.extract_transform_timers()
    assert [(t.encoded_key, t.timestamp) for t in again] == [(b"k", Timestamp(10))]


def test_a_key_whose_due_timers_are_scheduled_is_not_asked_again_until_it_changes(
    monkeypatch,
):
    asked = []
    get_timers = InMemoryUnmergedState.get_timers

    def counted(self, *args, **kwargs):
        asked.append(self)
        return get_timers(self, *args, **kwargs)

    monkeypatch.setattr(InMemoryUnmergedState, "get_timers", counted)
    at.indexed_timers()
    clock = beam_clock.TestClock(Timestamp(100))
    states = at.TrackedStates()
    state = InMemoryUnmergedState()
    state.set_timer(None, "first", TimeDomain.WATERMARK, Timestamp(10))
    state.set_timer(None, "second", TimeDomain.REAL_TIME, Timestamp(150))
    states[b"k"] = state
    marks = _watermarks(states, clock)
    marks._input_watermark = Timestamp(20)
    first, has_realtime = marks.extract_transform_timers()
    assert [t.name for t in first] == ["first"] and has_realtime
    for _ in range(5):  # its delivery waits in a queue: nothing about the key changed
        assert marks.extract_transform_timers() == ([], True)
    assert len(asked) == 1
    clock.advance_time(60)  # its other timer comes due: asked again, only that one fires
    second, _ = marks.extract_transform_timers()
    assert [t.name for t in second] == ["second"] and len(asked) == 2
    # Delivering the first writes the key: asked once more ("second" is still
    # scheduled, so not reported), then left alone again.
    _deliver(first[0], marks, states)
    for _ in range(5):
        assert marks.extract_transform_timers() == ([], True)
    assert len(asked) == 3
    _deliver(second[0], marks, states)
    assert marks.extract_transform_timers() == ([], False)  # no timer left


def test_outstanding_firings_count_timers_and_keys_by_value():
    from apache_beam.runners.direct.watermark_manager import TimerFiring

    def firing(key: bytes, name: str, window: Any = None) -> TimerFiring:
        return TimerFiring(key, window, name, TimeDomain.WATERMARK, Timestamp(5))

    a, a_again, b = firing(b"k", "t"), firing(b"k", "t"), firing(b"k", "u", window=7)
    firings = at.OutstandingFirings([a])
    firings.update([a_again, b])  # two objects for one timer (Beam compares by identity)
    assert len(firings) == 3
    assert firings.windows_of(b"k") == {None, 7} and firings.windows_of(b"other") == set()
    firings.remove(a)
    assert firings.scheduled(at._firing_id(a)) and firings.has_key(b"k")
    firings.difference_update([a_again])
    assert not firings.scheduled(at._firing_id(a)) and firings.has_key(b"k")
    assert firings.windows_of(b"k") == {7}
    firings.discard(b)
    assert not firings.has_key(b"k") and not firings and firings.windows_of(b"k") == set()
    with pytest.raises(KeyError):
        firings.remove(b)


def test_processing_time_in_nanoseconds_is_beams():
    rng = random.Random(3)
    values = [rng.uniform(-2e9, 2e9) for _ in range(2000)] + [12, 0.0000015, 1764100000.9999995]
    values += [Timestamp(5), Timestamp(seconds=1, subseconds=7, precision=9)]
    assert [at._nanos(v) for v in values] == [Timestamp.of(v).nanos for v in values]
