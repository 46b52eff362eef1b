"""When a local run has drained: the pure rules ``run_local.sh`` waits on.

``is_drained`` compares two consecutive summaries (``local.summary``):
every published id accounted for, training rows no longer growing, and
online quality covering the newest prediction, or its window no longer able
to fire (``quality_window_expired``). ``wait_drained`` polls until then,
waiting while any landed-row count grows (``made_progress``) and giving up
after an allowance without progress or a hard cap.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

# transforms.quality.LATE_FIRING_DELAY_SECONDS (a test keeps them equal; importing
# transforms here would load Beam into every progress line's process).
QUALITY_LATE_FIRING_DELAY_SECONDS = 10
# Margin for the last pane to be written after its window closed.
QUALITY_EXPIRY_MARGIN_SECONDS = 30


def quality_window_expired(last_event_time: float, window_seconds: int, now: float) -> bool:
    """Whether the evaluation window holding ``last_event_time`` can no longer fire.

    The quality windows are fixed windows of ``window_seconds`` with as much allowed
    lateness; the local runner's watermark follows the wall clock. So once ``now`` is
    past the window's end + lateness + the late-firing delay (+ a margin), a
    prediction that lands only now (a backlog) is dropped as too late and that
    window's pane will never come: waiting longer for it cannot help.
    """
    window_end = (last_event_time // window_seconds + 1) * window_seconds
    closes = window_end + window_seconds + QUALITY_LATE_FIRING_DELAY_SECONDS
    return now > closes + QUALITY_EXPIRY_MARGIN_SECONDS


def is_drained(summary: Mapping[str, Any], previous: Mapping[str, Any] | None) -> bool:
    """Whether the pipeline looks caught up with what the publisher sent.

    True when every published id is accounted for (with an ids file; else:
    all malformed messages are in the dead-letter table, by id when the stats
    list them, else by count), the training row count did not change since
    ``previous``, and (inline labels) online quality covers the newest
    prediction's evaluation window, or that window can no longer fire
    (``quality_window_expired``: the prediction landed after the window closed).
    """
    if summary.get("errors") or previous is None:
        return False
    if summary.get("unaccounted") is not None:
        return (
            summary["unaccounted"] == 0
            and summary.get("training_rows") == previous.get("training_rows")
            and _quality_settled(summary)
        )
    ids_known = summary.get("malformed_dead_lettered") is not None and summary.get(
        "malformed_ids_count"
    )
    if ids_known:
        dead_ok = summary["malformed_dead_lettered"] >= summary["malformed_ids_count"]
    else:
        dead_ok = (summary.get("dead_letters") or 0) >= (summary.get("malformed_published") or 0)
    training = summary.get("training_rows")
    return (
        dead_ok
        and training is not None
        and training == previous.get("training_rows")
        and _quality_settled(summary)
    )


def _quality_settled(summary: Mapping[str, Any]) -> bool:
    """Online quality covers the newest prediction, or its window can no longer fire."""
    return summary.get("quality_caught_up") is not False or bool(
        summary.get("quality_window_expired")
    )


_PROGRESS_KEYS = ("training_rows", "predictions", "dead_letters", "quality_rows")


def made_progress(summary: Mapping[str, Any], previous: Mapping[str, Any] | None) -> bool:
    """Whether any landed-row count grew since ``previous`` (a backlog being worked off)."""
    if previous is None:
        return False
    return any((summary.get(key) or 0) > (previous.get(key) or 0) for key in _PROGRESS_KEYS)


def wait_drained(
    build: Callable[[], dict[str, Any]],
    max_wait_seconds: float,
    poll_seconds: float = 5.0,
    report: Callable[[dict[str, Any]], None] | None = None,
    max_total_seconds: float | None = None,
) -> tuple[bool, dict[str, Any]]:
    """Polls ``build()`` until ``is_drained``, or until it stalls or the cap passes.

    Args:
        build: makes one summary.
        max_wait_seconds: how long to wait WITHOUT progress (no landed-row count
            grew, see ``made_progress``); every poll that sees progress restarts
            this allowance, so a pipeline working off a backlog is awaited.
        poll_seconds: between polls.
        report: called with each poll's summary.
        max_total_seconds: hard cap on the whole wait (default: ``max_wait_seconds``,
            i.e. progress does not extend it).

    Returns:
        (drained?, last summary).
    """
    start = time.monotonic()
    cap = start + max(max_total_seconds or 0.0, max_wait_seconds)
    stall_deadline = start + max_wait_seconds
    previous: dict[str, Any] | None = None
    while True:
        current = build()
        if report:
            report(current)
        if is_drained(current, previous):
            return True, current
        now = time.monotonic()
        if made_progress(current, previous):
            stall_deadline = now + max_wait_seconds
        if now + poll_seconds > min(stall_deadline, cap):
            return False, current
        previous = current
        time.sleep(poll_seconds)
