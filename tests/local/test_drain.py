"""local.drain: when a local run has drained, and the wait for it."""

from __future__ import annotations

import time

from local import drain


def test_is_drained():
    base = {"errors": [], "malformed_ids_count": 3, "malformed_published": 3}
    done = {**base, "malformed_dead_lettered": 3, "dead_letters": 3, "training_rows": 50}
    assert not drain.is_drained(done, None)
    assert drain.is_drained(done, {"training_rows": 50})
    assert not drain.is_drained(done, {"training_rows": 49})  # still growing
    missing = {**done, "malformed_dead_lettered": 2}
    assert not drain.is_drained(missing, {"training_rows": 50})
    by_count = {"errors": [], "malformed_published": 2, "dead_letters": 2, "training_rows": 5}
    assert drain.is_drained(by_count, {"training_rows": 5})
    waiting = {**done, "quality_caught_up": False}  # the last quality window is open
    assert not drain.is_drained(waiting, {"training_rows": 50})
    assert drain.is_drained({**done, "quality_caught_up": True}, {"training_rows": 50})


def test_drained_when_the_newest_quality_window_can_no_longer_fire():
    done = {"errors": [], "unaccounted": 0, "training_rows": 50, "quality_caught_up": False}
    assert not drain.is_drained(done, {"training_rows": 50})  # the window may still fire
    expired = {**done, "quality_window_expired": True}
    assert drain.is_drained(expired, {"training_rows": 50})


def test_quality_window_expired_after_end_plus_lateness_plus_delay():
    # 60 s windows: an event at 1,000,030 is in [1,000,020, 1,000,080); the window takes
    # late data until 1,000,140 and its last late pane comes 10 s later.
    closes = 1_000_080 + 60 + drain.QUALITY_LATE_FIRING_DELAY_SECONDS
    margin = drain.QUALITY_EXPIRY_MARGIN_SECONDS
    assert not drain.quality_window_expired(1_000_030, 60, closes + margin)
    assert drain.quality_window_expired(1_000_030, 60, closes + margin + 1)


def test_the_late_firing_delay_matches_the_quality_transform():
    from transforms import quality

    assert drain.QUALITY_LATE_FIRING_DELAY_SECONDS == quality.LATE_FIRING_DELAY_SECONDS


def test_wait_drained_gives_up():
    calls = []

    def build():
        calls.append(1)
        return {"errors": [], "training_rows": len(calls), "dead_letters": 0}

    drained, last = drain.wait_drained(build, max_wait_seconds=0.3, poll_seconds=0.1)
    assert not drained
    assert last["training_rows"] == len(calls) >= 2


def test_wait_drained_waits_while_a_backlog_is_worked_off():
    # Rows keep landing for longer than the no-progress allowance: still awaited.
    calls = []

    def build():
        calls.append(1)
        rows = min(len(calls), 6)
        return {"errors": [], "training_rows": rows, "dead_letters": 0, "malformed_published": 0}

    drained, last = drain.wait_drained(
        build, max_wait_seconds=0.25, poll_seconds=0.1, max_total_seconds=5
    )
    assert drained
    assert last["training_rows"] == 6


def test_wait_drained_stops_at_the_cap_despite_progress():
    calls = []

    def build():
        calls.append(1)
        return {"errors": [], "training_rows": len(calls), "dead_letters": 0}

    started = time.monotonic()
    drained, _ = drain.wait_drained(
        build, max_wait_seconds=0.25, poll_seconds=0.05, max_total_seconds=0.6
    )
    assert not drained
    assert time.monotonic() - started < 2


def test_made_progress():
    assert not drain.made_progress({"training_rows": 5}, None)
    assert not drain.made_progress({"training_rows": 5}, {"training_rows": 5})
    assert drain.made_progress({"predictions": 3}, {"predictions": 2})
    assert drain.made_progress({"dead_letters": 1}, {})


def test_is_drained_waits_for_every_published_id():
    base = {"errors": [], "training_rows": 50, "malformed_published": 0, "dead_letters": 0}
    assert drain.is_drained({**base, "unaccounted": 0}, {"training_rows": 50})
    assert not drain.is_drained({**base, "unaccounted": 3}, {"training_rows": 50})
