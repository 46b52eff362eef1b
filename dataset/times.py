"""Event times: one parser and one formatter for the pipeline, trainer and tools.

Every time the system reads (a payload field, a Pub/Sub attribute, a replayed
file, a BigQuery TIMESTAMP) goes through ``parse_event_time`` or
``to_datetime``; every time it writes is RFC 3339 UTC from ``utc_iso``.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from typing import Any

TIME_FORMATS = ("iso8601", "epoch_seconds", "epoch_millis")


class EventTimeError(ValueError):
    """A time value that does not parse in the expected format."""


def utc_iso(seconds: float) -> str:
    """Seconds since the epoch as an RFC 3339 UTC string (BigQuery TIMESTAMP)."""
    stamp = dt.datetime.fromtimestamp(seconds, tz=dt.UTC)
    return stamp.isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_event_time(value: Any, fmt: str) -> float:
    """Parses an event-time value in a config's format to epoch seconds.

    ISO-8601 strings must carry a zone; numbers must be finite.

    Raises:
        EventTimeError: naming the value and what was expected.
    """
    if fmt == "iso8601":
        if not isinstance(value, str):
            raise EventTimeError(f"expected an ISO-8601 string, got {value!r}")
        try:
            stamp = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError as e:
            raise EventTimeError(f"not an ISO-8601 time: {value!r}") from e
        if stamp.tzinfo is None:
            raise EventTimeError(f"ISO-8601 time without a timezone: {value!r}")
        return stamp.timestamp()
    if fmt not in TIME_FORMATS:
        raise EventTimeError(f"unknown time format {fmt!r}; expected one of {TIME_FORMATS}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EventTimeError(f"expected a number of {fmt}, got {value!r}")
    if not math.isfinite(value):
        raise EventTimeError(f"event time {value!r} is not finite")
    return float(value) / 1000.0 if fmt == "epoch_millis" else float(value)


def to_datetime(value: Any) -> dt.datetime:
    """A UTC datetime from a datetime, epoch seconds or an RFC 3339 string."""
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, bool):
        raise TypeError(f"not a time: {value!r}")
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(float(value), tz=dt.UTC)
    if isinstance(value, str):
        stamp = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)
    raise TypeError(f"not a time: {value!r}")


def rfc3339(value: Any) -> str:
    """Any time value as an RFC 3339 UTC string with microseconds."""
    stamp = to_datetime(value).astimezone(dt.UTC)
    return stamp.isoformat(timespec="microseconds").replace("+00:00", "Z")


def event_seconds(row: Mapping[str, Any], field: str = "event_time") -> float:
    """A row's event time (any accepted time value) as epoch seconds."""
    return to_datetime(row[field]).timestamp()


def format_event_time(seconds: float, fmt: str) -> str | int | float:
    """Epoch seconds as an event-time value in a config's format (``parse_event_time``'s inverse).

    ISO-8601 values are RFC 3339 UTC with milliseconds and ``Z`` (the precision
    event feeds carry; ``parse_event_time`` reads any precision).
    """
    if fmt == "iso8601":
        millis = int(round(seconds * 1000.0))
        stamp = dt.datetime.fromtimestamp(millis // 1000, tz=dt.UTC)
        return stamp.strftime("%Y-%m-%dT%H:%M:%S") + f".{millis % 1000:03d}Z"
    if fmt == "epoch_millis":
        return int(round(seconds * 1000.0))
    if fmt == "epoch_seconds":
        return round(seconds, 3)
    raise EventTimeError(f"unknown time format {fmt!r}; expected one of {TIME_FORMATS}")


def parse_utc_assumed(value: Any, fmt: str) -> float:
    """``parse_event_time``, but an ISO-8601 time without a zone is taken as UTC.

    Only for tools that were told so explicitly (the publisher's
    ``--assume-utc``); the pipeline never assumes a zone.
    """
    try:
        return parse_event_time(value, fmt)
    except EventTimeError:
        if fmt != "iso8601" or not isinstance(value, str) or has_zone(value) is not False:
            raise
    return dt.datetime.fromisoformat(value.strip()).replace(tzinfo=dt.UTC).timestamp()


def has_zone(value: str) -> bool | None:
    """Whether an ISO-8601 string carries a zone; None if it is not ISO-8601 at all."""
    try:
        stamp = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return stamp.tzinfo is not None


def parse_time_arg(value: str) -> float:
    """A time given on a command line: epoch seconds, or ISO-8601 with a zone.

    Raises:
        EventTimeError: saying which forms are accepted.
    """
    try:
        seconds = float(value)
    except ValueError:
        try:
            return parse_event_time(value, "iso8601")
        except EventTimeError as e:
            raise EventTimeError(
                f"cannot parse time {value!r} ({e}): use ISO-8601 with a zone "
                "(2024-01-01T00:00:00Z) or epoch seconds"
            ) from None
    if not math.isfinite(seconds):
        raise EventTimeError(f"time {value!r} is not finite")
    return seconds
