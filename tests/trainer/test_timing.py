"""trainer.timing: the phase timer the trainer records its run's timeline with."""

from __future__ import annotations

import itertools
import time

import pytest

from trainer.timing import PhaseTimer, process_start_time


def _ticks(start: float = 100.0, step: float = 0.5):
    counter = itertools.count()
    return lambda: start + step * next(counter)


def test_phases_are_recorded_in_order_with_their_seconds():
    timer = PhaseTimer(origin=99.0, clock=_ticks())
    timer.add("interpreter", 99.0, 99.75)
    with timer.phase("read"):
        pass
    with timer.phase("train"):
        pass
    assert [p.name for p in timer.phases] == ["interpreter", "read", "train"]
    assert timer.seconds() == {"interpreter_s": 0.75, "read_s": 0.5, "train_s": 0.5}
    timeline = timer.to_dict()
    assert timeline["origin"] == 99.0
    assert [(p["start"], p["end"]) for p in timeline["phases"]] == [
        (99.0, 99.75),
        (100.0, 100.5),
        (101.0, 101.5),
    ]
    assert timer.total_s() == 3.0  # the clock's next tick (102.0) minus the origin
    assert timer.summary() == "interpreter 0.75s, read 0.50s, train 0.50s"


def test_a_phase_that_raises_is_still_recorded():
    timer = PhaseTimer(clock=_ticks())
    with pytest.raises(RuntimeError), timer.phase("read"):
        raise RuntimeError("no table")
    assert timer.seconds() == {"read_s": 0.5}


def test_negative_spans_count_as_zero_and_names_are_unique():
    timer = PhaseTimer(origin=10.0, clock=_ticks())
    timer.add("launch", 12.0, 11.0)  # clocks of two hosts may disagree
    assert timer.seconds() == {"launch_s": 0.0}
    with pytest.raises(ValueError, match="new"):
        timer.add("launch", 1.0, 2.0)
    with pytest.raises(ValueError, match="non-empty"):
        timer.add("", 1.0, 2.0)


def test_the_default_origin_is_now_and_the_process_start_is_in_the_past():
    before = time.time()
    timer = PhaseTimer()
    assert before <= timer.origin <= time.time()
    assert process_start_time() <= before
