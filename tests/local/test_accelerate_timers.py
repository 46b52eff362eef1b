"""local.accelerate_timers: the timer index fires exactly what Beam's scan fires."""

from __future__ import annotations

import random

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


def _fired(marks: _TransformWatermarks) -> tuple[list, bool]:
    """One pass's firings; then they count as delivered (bundle committed)."""
    timers, has_realtime = marks.extract_transform_timers()
    marks.update_timers(timers)
    return [(t.encoded_key, t.window, t.name, t.time_domain, t.timestamp) for t in timers], (
        has_realtime
    )


@pytest.mark.parametrize("seed", range(8))
def test_index_fires_what_beams_scan_fires_through_random_changes(seed):
    rng = random.Random(seed)
    base = 1_700_000_000.0
    clock = beam_clock.TestClock(Timestamp(base))
    plain: dict = {}
    tracked = at.TrackedStates()
    beams = _watermarks(plain, clock)
    at.indexed_timers()
    indexed = _watermarks(tracked, clock)
    watermark = Timestamp(base - 10)
    checked_with_fired = 0
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
        beams._input_watermark = indexed._input_watermark = watermark
        expected = _fired(beams)
        if expected[0]:
            checked_with_fired += 1
        assert _fired(indexed) == expected, step
        # Keyed-state order is Beam's dict order, deletions and re-insertions included.
        assert list(tracked) == list(plain)
    assert checked_with_fired > 20  # the comparison saw real firings, not only empty passes


def test_only_keys_written_since_the_last_pass_are_summarised(monkeypatch):
    calls = []
    summary = at.timer_summary
    monkeypatch.setattr(at, "timer_summary", lambda s: calls.append(s) or summary(s))
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
    marks.update_timers(first)  # delivered; the state still has it (not re-committed yet)
    again, _ = marks.extract_transform_timers()
    assert [(t.encoded_key, t.timestamp) for t in again] == [(b"k", Timestamp(10))]
