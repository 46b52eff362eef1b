"""Pacing and accounting of a publishing run: when each message is due, counters, progress.

``PublishStats`` counts what was sent (``to_dict`` is the stats-file document),
``StatsWriter`` rewrites the stats file atomically every ~2 s and at the end,
``Progress`` draws a bar (TTY) or prints a line every few seconds.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from typing import Any

from dataset.times import format_event_time
from simulator.messages import OutMessage


def _iso(t: float) -> str:
    return format_event_time(t, "iso8601")


def due_time(start: float, index: int, rate: float) -> float:
    """When message ``index`` (0-based) is due, publishing ``rate`` messages/s from ``start``."""
    return start + index / rate


def due_count(start: float, now: float, rate: float) -> int:
    """How many messages are due by ``now`` (message 0 is due at ``start``)."""
    if now < start:
        return 0
    return math.floor((now - start) * rate + 1e-9) + 1


@dataclasses.dataclass
class PublishStats:
    """Counters of one publishing run (see ``to_dict`` for the stats-file keys)."""

    mode: str = ""
    topic: str = ""
    started_at: float = dataclasses.field(default_factory=time.time)
    events_published: int = 0
    valid_published: int = 0
    malformed_published: int = 0
    malformed_by_kind: dict[str, int] = dataclasses.field(default_factory=dict)
    malformed_ids: list[str] = dataclasses.field(default_factory=list)
    duplicates_published: int = 0
    late_published: int = 0
    messages_sent: int = 0
    first_event_time: float | None = None
    last_event_time: float | None = None
    skipped_rows: int = 0
    skipped_by_reason: dict[str, int] = dataclasses.field(default_factory=dict)

    def record(self, msg: OutMessage, duplicate: bool = False) -> None:
        """Counts one sent message (a logical message, or a duplicate of one)."""
        self.messages_sent += 1
        if duplicate:
            self.duplicates_published += 1
            return
        self.events_published += 1
        if msg.malformed_kind is None:
            self.valid_published += 1
        else:
            self.malformed_published += 1
            kinds = self.malformed_by_kind
            kinds[msg.malformed_kind] = kinds.get(msg.malformed_kind, 0) + 1
            self.malformed_ids.append(msg.message_id)
        if msg.late:
            self.late_published += 1
        if self.first_event_time is None or msg.event_time < self.first_event_time:
            self.first_event_time = msg.event_time
        if self.last_event_time is None or msg.event_time > self.last_event_time:
            self.last_event_time = msg.event_time

    def skip(self, reason: str) -> None:
        """Counts a replayed row that was not published."""
        self.skipped_rows += 1
        self.skipped_by_reason[reason] = self.skipped_by_reason.get(reason, 0) + 1

    def to_dict(self, running: bool, now: float | None = None) -> dict:
        """The stats-file document.

        ``events_published`` counts logical messages (malformed included,
        duplicates not); ``messages_sent`` counts everything sent;
        ``first_event_time``/``last_event_time`` are the earliest and latest
        event times published (RFC 3339), None before the first message.
        """
        now = time.time() if now is None else now
        return {
            "mode": self.mode,
            "topic": self.topic,
            "running": running,
            "started_at": _iso(self.started_at),
            "updated_at": _iso(now),
            "elapsed_seconds": round(now - self.started_at, 3),
            "events_published": self.events_published,
            "valid_published": self.valid_published,
            "malformed_published": self.malformed_published,
            "malformed_by_kind": dict(sorted(self.malformed_by_kind.items())),
            "malformed_ids": list(self.malformed_ids),
            "duplicates_published": self.duplicates_published,
            "late_published": self.late_published,
            "messages_sent": self.messages_sent,
            "first_event_time": (
                None if self.first_event_time is None else _iso(self.first_event_time)
            ),
            "last_event_time": (
                None if self.last_event_time is None else _iso(self.last_event_time)
            ),
            "skipped_rows": self.skipped_rows,
            "skipped_by_reason": dict(sorted(self.skipped_by_reason.items())),
        }


def write_json_atomic(path: str, document: Any) -> None:
    """Writes JSON to ``path`` via a temporary file and rename (readers never see half)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".stats-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(document, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class StatsWriter:
    """Rewrites the stats file every ``interval`` seconds and at the end."""

    def __init__(self, path: str | None, interval: float = 2.0, clock=time.time):
        self.path = path
        self.interval = interval
        self._clock = clock
        self._last = -math.inf

    def maybe_write(self, stats: PublishStats) -> None:
        if self.path and self._clock() - self._last >= self.interval:
            self.write(stats, running=True)

    def write(self, stats: PublishStats, running: bool) -> None:
        if not self.path:
            return
        now = self._clock()
        write_json_atomic(self.path, stats.to_dict(running=running, now=now))
        self._last = now


class Progress:
    """Progress on stderr: a ``\\r`` bar on a TTY, otherwise a line every ``line_interval`` s."""

    def __init__(
        self,
        total: int | None = None,
        stream=None,
        line_interval: float = 5.0,
        bar_interval: float = 0.25,
        clock=time.time,
    ):
        self.stream = stream if stream is not None else sys.stderr
        self.total = total
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = bar_interval if self.tty else line_interval
        self._clock = clock
        self._start = clock()
        self._last = clock()

    def text(self, stats: PublishStats) -> str:
        elapsed = max(self._clock() - self._start, 1e-9)
        parts = []
        if self.total:
            frac = min(stats.events_published / self.total, 1.0)
            filled = int(frac * 24)
            parts.append(f"[{'#' * filled}{'.' * (24 - filled)}] {frac * 100:3.0f}%")
        parts.append(f"published {stats.events_published}")
        parts.append(f"{stats.messages_sent / elapsed:.1f} msg/s")
        parts.append(f"malformed {stats.malformed_published}")
        if stats.duplicates_published:
            parts.append(f"dup {stats.duplicates_published}")
        if stats.late_published:
            parts.append(f"late {stats.late_published}")
        if stats.skipped_rows:
            parts.append(f"skipped {stats.skipped_rows}")
        parts.append(f"elapsed {elapsed:.0f}s")
        return "  ".join(parts)

    def update(self, stats: PublishStats) -> None:
        now = self._clock()
        if now - self._last < self.interval:
            return
        self._last = now
        if self.tty:
            self.stream.write("\r" + self.text(stats) + "\x1b[K")
        else:
            self.stream.write(self.text(stats) + "\n")
        self.stream.flush()

    def finish(self, stats: PublishStats) -> None:
        self.stream.write(("\r" if self.tty else "") + "done: " + self.text(stats) + "\n")
        self.stream.flush()
