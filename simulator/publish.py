"""Publishes simulated or recorded events to Pub/Sub; exports simulated data to files.

Usage::

    python -m simulator.publish simulate --config configs/traffic.yaml \\
        --topic projects/P/topics/T --rate 30 --duration 120 [--sensors 300] [--seed 7] \\
        [--day-seconds 600] [--drift-after SECONDS] [--malformed-fraction 0.02] \\
        [--late-fraction 0.0] [--late-seconds 60] [--duplicate-fraction 0.0] \\
        [--stats-file PATH]
    python -m simulator.publish replay FILE --config CONFIG --topic T [--rate 100] \\
        [--rebase-time] [--stats-file PATH]
    python -m simulator.publish export-history --config configs/traffic.yaml \\
        --out FILE.jsonl|FILE.csv --events N [--end-time ISO|EPOCH] [--rate 10] ...
    python -m simulator.publish export-ads --out data/ad_conversions_sample.jsonl \\
        [--impressions 300]

Every message's data is compact JSON and its attributes are
``{config.event_time_attribute: RFC 3339 UTC event time, config.id_attribute:
unique id}``. Malformed messages (``--malformed-fraction``) also carry valid
attributes; duplicates (``--duplicate-fraction``) reuse the id attribute of
the message they repeat. The stats file (``--stats-file``) is JSON, rewritten
atomically every ~2 s and at exit, see ``PublishStats.to_dict``.

Pure logic (message building, malformation, pacing, CSV typing, time
rebasing) lives in plain functions; the Pub/Sub client, clocks, files and
signals are confined to ``PubSubSink``, ``StatsWriter``, ``Progress`` and the
``run_*`` functions.
"""

from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import datetime as dt
import json
import logging
import math
import os
import random
import re
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from dataset.config import DatasetConfig, load_config
from simulator.ads import DEFAULT_START_MILLIS, AdSimulator
from simulator.traffic import TrafficSimulator, format_iso_millis

logger = logging.getLogger(__name__)

MALFORMED_KINDS = (
    "not_json",
    "not_object",
    "missing_feature",
    "extra_field",
    "wrong_type",
    "out_of_range",
    "list_value",
    "missing_key",
)
_TOPIC_RE = re.compile(r"^projects/[^/]+/topics/[^/]+$")
_JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
_CSV_SUFFIXES = (".csv",)
_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}


class PublishError(RuntimeError):
    """Publishing failed: topic missing, Pub/Sub unreachable, or a publish failed."""


# --------------------------------------------------------------------------------------
# Time helpers (pure)
# --------------------------------------------------------------------------------------


def rfc3339(t: float) -> str:
    """Epoch seconds as an RFC 3339 UTC string with milliseconds and 'Z'."""
    return format_iso_millis(t)


def parse_time_arg(value: str) -> float:
    """Parses a CLI time: ISO-8601 (UTC if no offset) or epoch seconds."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return _parse_iso(value)
    except ValueError:
        raise ValueError(
            f"cannot parse time {value!r}: use ISO-8601 (2024-01-01T00:00:00Z) or epoch seconds"
        ) from None


def _parse_iso(value: str) -> float:
    d = dt.datetime.fromisoformat(value.strip())
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.UTC)
    return d.timestamp()


def parse_event_time(value: Any, fmt: str) -> float:
    """Converts an event-time field value in format ``fmt`` to epoch seconds.

    Raises:
        ValueError: if the value is missing, of the wrong kind or unparseable.
    """
    if value is None or isinstance(value, bool):
        raise ValueError(f"event time {value!r} is not a valid {fmt} value")
    if fmt == "iso8601":
        if not isinstance(value, str):
            raise ValueError(f"event time {value!r} is not an ISO-8601 string")
        try:
            t = _parse_iso(value)
        except ValueError:
            raise ValueError(f"event time {value!r} is not an ISO-8601 string") from None
    else:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"event time {value!r} is not a number ({fmt})") from None
        t = number / 1000.0 if fmt == "epoch_millis" else number
    if not math.isfinite(t):
        raise ValueError(f"event time {value!r} is not finite")
    return t


def format_event_time(t: float, fmt: str) -> str | int | float:
    """Formats epoch seconds ``t`` as an event-time field value in format ``fmt``."""
    if fmt == "iso8601":
        return format_iso_millis(t)
    if fmt == "epoch_millis":
        return int(round(t * 1000.0))
    if fmt == "epoch_seconds":
        return round(t, 3)
    raise ValueError(f"unknown event time format {fmt!r}")


def event_time_of(record: dict, config: DatasetConfig) -> float:
    """Reads a record's event time (epoch seconds) from the config's event-time field.

    Raises:
        ValueError: if the field is missing or unparseable.
    """
    if config.event_time_field not in record:
        raise ValueError(f"missing event-time field {config.event_time_field!r}")
    return parse_event_time(record[config.event_time_field], config.event_time_format)


def with_event_time(record: dict, config: DatasetConfig, t: float) -> dict:
    """A copy of ``record`` whose event-time field says ``t`` in the config's format."""
    out = dict(record)
    out[config.event_time_field] = format_event_time(t, config.event_time_format)
    return out


def rebase_record(record: dict, config: DatasetConfig, t: float) -> dict:
    """Rewrites a replayed record's event time to ``t`` (the time it is published)."""
    return with_event_time(record, config, t)


# --------------------------------------------------------------------------------------
# Messages (pure)
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OutMessage:
    """One Pub/Sub message ready to publish."""

    data: bytes
    attributes: dict[str, str]
    event_time: float
    message_id: str
    malformed_kind: str | None = None
    late: bool = False


def to_json_bytes(value: Any) -> bytes:
    """Compact JSON (no spaces), UTF-8."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def message_attributes(config: DatasetConfig, event_time: float, message_id: str) -> dict:
    """The attributes every message carries: event time and id."""
    return {config.event_time_attribute: rfc3339(event_time), config.id_attribute: message_id}


def build_message(
    record: dict,
    config: DatasetConfig,
    event_time: float,
    message_id: str,
    *,
    malformed_kind: str | None = None,
    rng: random.Random | None = None,
    late: bool = False,
) -> OutMessage:
    """Builds the message for ``record`` (serialized as is, or malformed on purpose).

    Args:
        record: the payload; its event-time field is not touched (see ``with_event_time``).
        config: the dataset config (attribute names, fields for malformation).
        event_time: epoch seconds for the event-time attribute.
        message_id: the id attribute.
        malformed_kind: one of ``MALFORMED_KINDS`` to corrupt the payload, or None.
        rng: randomness for the malformation (required with ``malformed_kind``).
        late: marks the message as deliberately late (for stats only).
    """
    if malformed_kind is None:
        data = to_json_bytes(record)
    else:
        data = malform(record, config, malformed_kind, rng or random.Random(0))
    return OutMessage(
        data=data,
        attributes=message_attributes(config, event_time, message_id),
        event_time=event_time,
        message_id=message_id,
        malformed_kind=malformed_kind,
        late=late,
    )


def _allowed_fields(config: DatasetConfig) -> set[str]:
    names = {config.key_field, config.event_time_field, config.label.field, *config.feature_names}
    if config.label.join_key:
        names.add(config.label.join_key)
    names.update(config.extra_fields)
    return names


def available_malformed_kinds(config: DatasetConfig) -> tuple[str, ...]:
    """The malformation kinds that can produce an invalid message for ``config``."""
    kinds = []
    bounded = [f for f in config.numeric_features if f.min is not None or f.max is not None]
    categorical = [f for f in config.features if f.values]
    for kind in MALFORMED_KINDS:
        if kind == "out_of_range" and not (bounded or categorical):
            continue
        kinds.append(kind)
    return tuple(kinds)


def malform(record: dict, config: DatasetConfig, kind: str, rng: random.Random) -> bytes:
    """Returns the payload bytes of ``record`` corrupted in the way ``kind`` names.

    The record must be valid for ``config`` (all features present). Every kind
    yields a payload a validator of ``config`` must reject.

    Raises:
        ValueError: for an unknown kind or one that ``config`` cannot express.
    """
    rec = dict(record)
    features = [f for f in config.features if f.name in rec]
    if kind == "not_json":
        variant = rng.randrange(3)
        if variant == 0:  # truncated JSON: the object is never closed
            text = to_json_bytes(rec)
            return text[: max(1, len(text) // 2)]
        if variant == 1:  # plain text log line
            return f"{rec.get(config.key_field, 'sensor')} reading ok=yes".encode()
        return b"\xff\xfe\x00garbage{"  # not even UTF-8
    if kind == "not_object":
        variant = rng.randrange(3)
        if variant == 0:
            return to_json_bytes(list(rec.values()))
        if variant == 1:
            return to_json_bytes(str(rec.get(config.key_field, "x")))
        return to_json_bytes(rng.randint(0, 1000))
    if not features:
        raise ValueError(f"cannot make a {kind!r} message: the record has no features")
    if kind == "missing_feature":
        del rec[rng.choice(features).name]
    elif kind == "extra_field":
        allowed = _allowed_fields(config)
        name = f"unexpected_field_{rng.randrange(1000)}"
        while name in allowed:
            name += "_x"
        rec[name] = rng.choice([1, "surprise", 3.5, True])
    elif kind == "wrong_type":
        numeric = [f for f in features if f.is_numeric]
        if numeric:
            rec[rng.choice(numeric).name] = rng.choice(["n/a", "fast", "12 km/h", "NaN!"])
        else:
            rec[rng.choice(features).name] = rng.choice([{"v": 1}, 42.5])
    elif kind == "out_of_range":
        bounded = [f for f in features if f.is_numeric and (f.min is not None or f.max is not None)]
        categorical = [f for f in features if f.values]
        if bounded:
            spec = rng.choice(bounded)
            lo = spec.min if spec.min is not None else 0.0
            hi = spec.max if spec.max is not None else lo
            span = max(hi - lo, 1.0)
            go_high = spec.max is not None and (spec.min is None or rng.random() < 0.6)
            offset = span * rng.uniform(0.5, 2.0) + 1.0
            value = hi + offset if go_high else lo - offset
            rec[spec.name] = (
                int(math.ceil(value) if go_high else math.floor(value))
                if (spec.type == "int")
                else round(value, 3)
            )
        elif categorical:
            spec = rng.choice(categorical)
            rec[spec.name] = "not_a_" + "_".join(spec.values)
        else:
            raise ValueError(f"config {config.name!r} has no bounded or categorical feature")
    elif kind == "list_value":
        spec = rng.choice(features)
        rec[spec.name] = [rec[spec.name], rec[spec.name]]
    elif kind == "missing_key":
        rec.pop(config.key_field, None)
    else:
        raise ValueError(
            f"unknown malformed kind {kind!r}; choose from {', '.join(MALFORMED_KINDS)}"
        )
    return to_json_bytes(rec)


def new_message_id() -> str:
    """A fresh unique id (uuid4 hex)."""
    return uuid.uuid4().hex


# --------------------------------------------------------------------------------------
# CSV / JSONL reading (typing is pure)
# --------------------------------------------------------------------------------------


def coerce_value(value: str, ftype: str) -> Any:
    """Converts a CSV cell to ``ftype`` (int, float, string, bool).

    A cell that does not convert is returned unchanged (as a string), so the
    pipeline's validation sees and dead-letters it instead of the replay
    silently fixing or dropping it.
    """
    text = value.strip()
    try:
        if ftype == "int":
            try:
                return int(text)
            except ValueError:
                number = float(text)
                if number.is_integer():
                    return int(number)
                return value
        if ftype == "float":
            number = float(text)
            return number if math.isfinite(number) else value
        if ftype == "bool":
            low = text.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            return value
    except ValueError:
        return value
    return value


def csv_column_types(config: DatasetConfig) -> dict[str, str]:
    """The type each known CSV column converts to; unknown columns stay strings."""
    types = {f.name: f.type for f in config.features}
    types[config.key_field] = "string"
    types[config.label.field] = config.label.type
    if config.label.join_key:
        types[config.label.join_key] = "string"
    if config.event_time_format == "epoch_millis":
        types[config.event_time_field] = "int"
    elif config.event_time_format == "epoch_seconds":
        types[config.event_time_field] = "float"
    else:
        types[config.event_time_field] = "string"
    return types


def csv_row_to_record(row: dict[str, str | None], config: DatasetConfig) -> dict:
    """Types one CSV row (``csv.DictReader`` dict) by the config; empty cells are missing."""
    types = csv_column_types(config)
    out: dict[str, Any] = {}
    for name, value in row.items():
        if name is None or value is None or value.strip() == "":
            continue  # surplus cells (no header) and empty cells are dropped
        out[name] = coerce_value(value, types.get(name, "string"))
    return out


def file_kind(path: str) -> str:
    """'jsonl' or 'csv' from the file name; ValueError for anything else."""
    low = path.lower()
    if low.endswith(_JSON_SUFFIXES):
        return "jsonl"
    if low.endswith(_CSV_SUFFIXES):
        return "csv"
    raise ValueError(
        f"unknown file type for {path!r}: use JSON Lines ({', '.join(_JSON_SUFFIXES)}) "
        f"or CSV ({', '.join(_CSV_SUFFIXES)})"
    )


def read_records(path: str, config: DatasetConfig) -> Iterator[tuple[int, dict | None, str]]:
    """Returns an iterator of ``(line_number, record, problem)`` per data row (JSONL or CSV).

    ``record`` is None when the row cannot be used; ``problem`` then names why
    (``invalid_json``, ``not_an_object``), else it is ''. Blank lines are skipped.
    """
    kind = file_kind(path)
    if not os.path.exists(path):
        raise ValueError(f"replay file {path!r} does not exist")
    return _iter_records(path, kind, config)


def _iter_records(
    path: str, kind: str, config: DatasetConfig
) -> Iterator[tuple[int, dict | None, str]]:
    with open(path, encoding="utf-8", newline="" if kind == "csv" else None) as f:
        if kind == "csv":
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                raise ValueError(f"{path}: CSV file has no header row")
            for row in reader:
                yield reader.line_num, csv_row_to_record(row, config), ""
            return
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                yield n, None, "invalid_json"
                continue
            if not isinstance(value, dict):
                yield n, None, "not_an_object"
                continue
            yield n, value, ""


# --------------------------------------------------------------------------------------
# Pacing (pure)
# --------------------------------------------------------------------------------------


def due_time(start: float, index: int, rate: float) -> float:
    """When message ``index`` (0-based) is due, publishing ``rate`` messages/s from ``start``."""
    return start + index / rate


def due_count(start: float, now: float, rate: float) -> int:
    """How many messages are due by ``now`` (message 0 is due at ``start``)."""
    if now < start:
        return 0
    return math.floor((now - start) * rate + 1e-9) + 1


# --------------------------------------------------------------------------------------
# Stats, progress
# --------------------------------------------------------------------------------------


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
            "started_at": rfc3339(self.started_at),
            "updated_at": rfc3339(now),
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
                None if self.first_event_time is None else rfc3339(self.first_event_time)
            ),
            "last_event_time": (
                None if self.last_event_time is None else rfc3339(self.last_event_time)
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


# --------------------------------------------------------------------------------------
# Pub/Sub
# --------------------------------------------------------------------------------------


class Sink(Protocol):
    """Where messages go: Pub/Sub in production, a list in tests."""

    def publish(self, msg: OutMessage) -> None: ...

    def poll(self) -> None: ...

    def flush(self, timeout: float) -> None: ...


def _where() -> str:
    host = os.environ.get("PUBSUB_EMULATOR_HOST")
    return f"the Pub/Sub emulator at {host}" if host else "Pub/Sub (pubsub.googleapis.com)"


class PubSubSink:
    """Batch-publishes to a topic with google-cloud-pubsub; raises on any failed publish.

    Args:
        topic: ``projects/<project>/topics/<name>``.
        check_timeout: seconds to wait for the topic check at start.
        publish_timeout: overall seconds a publish may take, retries included.
    """

    def __init__(self, topic: str, check_timeout: float = 10.0, publish_timeout: float = 60.0):
        if not _TOPIC_RE.match(topic):
            raise ValueError(
                f"--topic must look like projects/<project>/topics/<name>, got {topic!r}"
            )
        from google.api_core import retry as retries
        from google.cloud import pubsub_v1

        self.topic = topic
        retry = retries.Retry(initial=0.1, maximum=5.0, multiplier=2.0, timeout=publish_timeout)
        try:
            self.client = pubsub_v1.PublisherClient(
                batch_settings=pubsub_v1.types.BatchSettings(
                    max_messages=500, max_bytes=2_000_000, max_latency=0.05
                ),
                publisher_options=pubsub_v1.types.PublisherOptions(
                    retry=retry, timeout=min(publish_timeout, 30.0)
                ),
            )
        except Exception as e:  # e.g. google.auth.exceptions.DefaultCredentialsError
            raise PublishError(f"cannot create a Pub/Sub publisher for {_where()}: {e}") from e
        self._check_timeout = check_timeout
        self._futures: collections.deque = collections.deque()

    def check_topic(self) -> None:
        """Fails fast with a clear message if the topic is missing or Pub/Sub unreachable."""
        from google.api_core import exceptions as gexc

        try:
            self.client.get_topic(
                request={"topic": self.topic}, timeout=self._check_timeout, retry=None
            )
        except gexc.NotFound:
            raise PublishError(
                f"topic {self.topic} does not exist on {_where()}; create it first, e.g. "
                f"`gcloud pubsub topics create {self.topic.rsplit('/', 1)[1]}` "
                "or PublisherClient().create_topic(name=...)"
            ) from None
        except (gexc.ServiceUnavailable, gexc.DeadlineExceeded, gexc.RetryError) as e:
            raise PublishError(
                f"cannot reach {_where()} within {self._check_timeout:.0f}s "
                f"({type(e).__name__}); is the emulator running and PUBSUB_EMULATOR_HOST "
                "right?"
            ) from None
        except gexc.GoogleAPICallError as e:
            raise PublishError(f"checking topic {self.topic} on {_where()} failed: {e}") from e

    def publish(self, msg: OutMessage) -> None:
        self._futures.append(self.client.publish(self.topic, msg.data, **msg.attributes))

    def poll(self) -> None:
        """Drops finished publishes; raises ``PublishError`` if one failed."""
        while self._futures and self._futures[0].done():
            self._raise_if_failed(self._futures.popleft(), timeout=0)

    def flush(self, timeout: float = 60.0) -> None:
        """Waits for every outstanding publish."""
        deadline = time.monotonic() + timeout
        while self._futures:
            remaining = max(deadline - time.monotonic(), 0.0)
            self._raise_if_failed(self._futures.popleft(), timeout=remaining)

    def _raise_if_failed(self, future, timeout: float) -> None:
        try:
            future.result(timeout=timeout)
        except Exception as e:
            raise PublishError(f"publishing to {self.topic} on {_where()} failed: {e!r}") from e

    def close(self) -> None:
        try:
            self.client.stop()
        except Exception:  # already stopped, or a failure we already reported
            logger.debug("publisher stop failed", exc_info=True)


# --------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------


def _connect(topic: str) -> PubSubSink:
    """A ``PubSubSink`` whose topic was checked to exist."""
    sink = PubSubSink(topic)
    try:
        sink.check_topic()
    except BaseException:
        sink.close()
        raise
    return sink


@dataclasses.dataclass(frozen=True)
class InjectionOptions:
    """Fractions of deliberately bad, late and duplicated messages."""

    malformed_fraction: float = 0.0
    late_fraction: float = 0.0
    late_seconds: float = 60.0
    duplicate_fraction: float = 0.0

    def validate(self) -> None:
        for name in ("malformed_fraction", "late_fraction", "duplicate_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} must be between 0 and 1, got {value}")
        if self.late_seconds <= 0:
            raise ValueError(f"--late-seconds must be positive, got {self.late_seconds}")


def check_config_matches(config: DatasetConfig, sample: dict, what: str) -> None:
    """Raises ValueError unless every field the config needs is in ``sample``."""
    needed = [config.key_field, config.event_time_field, *config.feature_names, config.label.field]
    missing = [n for n in needed if n not in sample]
    if missing:
        raise ValueError(
            f"config {config.source_path or config.name!r} does not describe {what}: "
            f"its fields {missing} are not produced (produced: {sorted(sample)})"
        )


class _Runner:
    """Shared loop plumbing: stats, progress, stats file, stop flag."""

    def __init__(
        self,
        sink: Sink,
        stats: PublishStats,
        stats_writer: StatsWriter,
        progress: Progress,
        stop: threading.Event,
        ids_file: str | None = None,
    ):
        self.sink = sink
        self.stats = stats
        self.writer = stats_writer
        self.progress = progress
        self.stop = stop
        # One published message id per line (duplicates not repeated), for reconciliation.
        self.ids = open(ids_file, "a", encoding="utf-8", buffering=1) if ids_file else None

    def send(self, msg: OutMessage, duplicate: bool = False) -> None:
        self.sink.publish(msg)
        self.stats.record(msg, duplicate=duplicate)
        if self.ids is not None and not duplicate:
            self.ids.write(f"{msg.message_id}\n")

    def tick(self) -> None:
        self.sink.poll()
        self.progress.update(self.stats)
        self.writer.maybe_write(self.stats)

    def sleep_until(self, when: float, clock: Callable[[], float], max_step: float = 0.1) -> None:
        """Sleeps until ``when`` (or the stop flag), ticking at least every ``max_step`` s."""
        while not self.stop.is_set():
            remaining = when - clock()
            if remaining <= 0:
                return
            self.stop.wait(min(remaining, max_step))
            self.tick()

    def finish(self, flush_timeout: float) -> None:
        try:
            self.sink.flush(flush_timeout)
        finally:
            self.writer.write(self.stats, running=False)
            self.progress.finish(self.stats)
            if self.ids is not None:
                self.ids.close()


def run_simulate(
    config: DatasetConfig,
    topic: str,
    rate: float,
    duration: float | None,
    *,
    n_sensors: int = 300,
    seed: int = 7,
    day_seconds: float = 600.0,
    day_origin: float = 0.0,
    drift_after: float | None = None,
    injection: InjectionOptions | None = None,
    stats_file: str | None = None,
    ids_file: str | None = None,
    sink: Sink | None = None,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.time,
    progress_stream=None,
) -> PublishStats:
    """Publishes live traffic readings with event time "now" at ``rate`` per second.

    Runs for ``duration`` seconds (None: until ``stop`` is set). Returns the stats,
    which are also written to ``stats_file`` every ~2 s and at the end.

    Raises:
        ValueError: bad arguments or a config that does not fit the simulator.
        PublishError: the topic is missing, Pub/Sub is unreachable or a publish failed.
    """
    if rate <= 0:
        raise ValueError(f"--rate must be positive (messages per second), got {rate}")
    if duration is not None and duration <= 0:
        raise ValueError(f"--duration must be positive seconds, got {duration}")
    injection = injection or InjectionOptions()
    injection.validate()

    def make_sim(start_time: float) -> TrafficSimulator:
        return TrafficSimulator(
            n_sensors=n_sensors,
            seed=seed,
            day_seconds=day_seconds,
            drift_after_seconds=drift_after,
            start_time=start_time,
            day_origin=day_origin,
        )

    probe = make_sim(0.0)  # validates the arguments before connecting
    check_config_matches(config, probe.reading(0, clock()), "the traffic simulator's readings")
    kinds = available_malformed_kinds(config)
    own_sink = sink is None
    if sink is None:
        sink = _connect(topic)
    stop = stop or threading.Event()
    start = clock()  # after connecting, so the first events are not published in a burst
    sim = make_sim(start)  # the drift is scheduled from here
    stats = PublishStats(mode="simulate", topic=topic, started_at=start)
    total = int(rate * duration) if duration else None
    runner = _Runner(
        sink,
        stats,
        StatsWriter(stats_file, clock=clock),
        Progress(total, progress_stream, clock=clock),
        stop,
        ids_file,
    )
    rng = random.Random(f"simulator.publish/{seed}")
    recent: collections.deque[OutMessage] = collections.deque(maxlen=1000)
    end = start + duration if duration else math.inf
    cursor = start
    logger.info(
        "simulating %d sensors at %.1f msg/s to %s for %s (drift %s)",
        n_sensors,
        rate,
        topic,
        f"{duration:g}s" if duration else "until stopped",
        f"after {drift_after:g}s" if drift_after is not None else "never",
    )
    try:
        runner.writer.write(stats, running=True)
        while not stop.is_set() and cursor < end:
            upto = min(clock(), end)
            for k, t in sim.grid(cursor, upto, rate):
                late = rng.random() < injection.late_fraction
                event_time = t - injection.late_seconds if late else t
                record = with_event_time(sim.reading(k, event_time), config, event_time)
                kind = rng.choice(kinds) if rng.random() < injection.malformed_fraction else None
                msg = build_message(
                    record,
                    config,
                    event_time,
                    new_message_id(),
                    malformed_kind=kind,
                    rng=rng,
                    late=late,
                )
                runner.send(msg)
                recent.append(msg)
                if rng.random() < injection.duplicate_fraction:
                    runner.send(rng.choice(recent), duplicate=True)
            cursor = max(cursor, upto)
            runner.tick()
            if cursor < end:
                next_t = math.ceil(cursor * rate) / rate
                runner.sleep_until(min(max(next_t, cursor + 0.001), end), clock, max_step=0.1)
    finally:
        try:
            runner.finish(flush_timeout=60.0)
        finally:
            if own_sink:
                sink.close()
    logger.info("simulate finished: %s", _summary(stats))
    return stats


def run_replay(
    path: str,
    config: DatasetConfig,
    topic: str,
    rate: float = 100.0,
    *,
    rebase_time: bool = False,
    stats_file: str | None = None,
    ids_file: str | None = None,
    sink: Sink | None = None,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.time,
    progress_stream=None,
) -> PublishStats:
    """Replays a JSONL or CSV file to ``topic`` in file order at ``rate`` messages/s.

    Rows without a usable event time (or that are not JSON objects) are
    skipped, counted in the stats (``skipped_by_reason``) and reported at the end.
    With ``rebase_time`` each record's event time (payload and attribute) becomes
    the wall-clock time it is published.

    Raises:
        ValueError: unknown file type, missing file, bad rate.
        PublishError: the topic is missing, Pub/Sub is unreachable or a publish failed.
    """
    if rate <= 0:
        raise ValueError(f"--rate must be positive (messages per second), got {rate}")
    records = read_records(path, config)  # validates the file type before connecting
    own_sink = sink is None
    if sink is None:
        sink = _connect(topic)
    stop = stop or threading.Event()
    start = clock()
    stats = PublishStats(mode="replay", topic=topic, started_at=start)
    runner = _Runner(
        sink,
        stats,
        StatsWriter(stats_file, clock=clock),
        Progress(None, progress_stream, clock=clock),
        stop,
        ids_file,
    )
    index = 0
    last_rebased = -math.inf
    reported = 0
    warned_old = False
    try:
        runner.writer.write(stats, running=True)
        for line_no, record, problem in records:
            if stop.is_set():
                break
            if record is None:
                stats.skip(problem)
                reported = _report_skip(path, line_no, problem, reported)
                continue
            try:
                event_time = event_time_of(record, config)
            except ValueError as e:
                reason = (
                    "missing_event_time"
                    if config.event_time_field not in record
                    else "bad_event_time"
                )
                stats.skip(reason)
                reported = _report_skip(path, line_no, f"{reason}: {e}", reported)
                continue
            runner.sleep_until(due_time(start, index, rate), clock)
            if stop.is_set():
                break
            if rebase_time:
                event_time = max(clock(), last_rebased)
                last_rebased = event_time
                record = rebase_record(record, config, event_time)
            elif not warned_old and event_time < clock() - 3600:
                warned_old = True
                logger.warning(
                    "%s:%d: event time %s is over an hour old; a runner whose watermark "
                    "follows the wall clock will drop it as late (use --rebase-time)",
                    path,
                    line_no,
                    rfc3339(event_time),
                )
            runner.send(build_message(record, config, event_time, new_message_id()))
            index += 1
            runner.tick()
    finally:
        try:
            runner.finish(flush_timeout=60.0)
        finally:
            if own_sink:
                sink.close()
    if stats.skipped_rows:
        logger.warning(
            "%s: skipped %d rows not publishable: %s",
            path,
            stats.skipped_rows,
            stats.skipped_by_reason,
        )
    logger.info("replay finished: %s", _summary(stats))
    return stats


def _report_skip(path: str, line_no: int, problem: str, reported: int) -> int:
    if reported < 10:
        logger.warning("%s:%d: skipped (%s)", path, line_no, problem)
    elif reported == 10:
        logger.warning("%s: more rows skipped; see the final count", path)
    return reported + 1


def _summary(stats: PublishStats) -> str:
    return (
        f"{stats.events_published} events ({stats.valid_published} valid, "
        f"{stats.malformed_published} malformed, {stats.late_published} late), "
        f"{stats.duplicates_published} duplicates, {stats.messages_sent} messages sent"
        + (f", {stats.skipped_rows} rows skipped" if stats.skipped_rows else "")
    )


# --------------------------------------------------------------------------------------
# Exports
# --------------------------------------------------------------------------------------


def write_records(path: str, records: Iterable[dict], columns: list[str] | None = None) -> int:
    """Writes records as JSON Lines or CSV (by file name); returns the count."""
    kind = file_kind(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8", newline="" if kind == "csv" else None) as f:
        if kind == "csv":
            rows = list(records)
            header = columns or sorted({k for r in rows for k in r})
            writer = csv.DictWriter(f, fieldnames=header, extrasaction="raise")
            writer.writeheader()
            for row in rows:
                writer.writerow(row)
                n += 1
        else:
            for record in records:
                f.write(json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n")
                n += 1
    return n


def export_history(
    config: DatasetConfig,
    out: str,
    n_events: int,
    end_time: float,
    *,
    rate: float = 10.0,
    n_sensors: int = 300,
    seed: int = 7,
    day_seconds: float = 600.0,
    day_origin: float = 0.0,
    drift_after: float | None = None,
) -> int:
    """Writes ``n_events`` simulated past readings ending before ``end_time``.

    ``drift_after`` counts from the first exported event. Returns the count.
    """
    if n_events <= 0:
        raise ValueError(f"--events must be positive, got {n_events}")
    if rate <= 0:
        raise ValueError(f"--rate must be positive, got {rate}")
    file_kind(out)
    first = math.ceil(end_time * rate) - n_events
    sim = TrafficSimulator(
        n_sensors=n_sensors,
        seed=seed,
        day_seconds=day_seconds,
        drift_after_seconds=drift_after,
        start_time=first / rate,
        day_origin=day_origin,
    )
    events = sim.history_events(n_events, end_time, rate)
    check_config_matches(config, events[0][1], "the traffic simulator's readings")
    records = [with_event_time(r, config, t) for t, r in events]
    columns = [config.key_field, config.event_time_field, *config.feature_names, config.label.field]
    n = write_records(out, records, columns)
    logger.info(
        "wrote %d readings (%s .. %s) to %s", n, rfc3339(events[0][0]), rfc3339(events[-1][0]), out
    )
    return n


def export_ads(
    out: str,
    n_impressions: int = 300,
    *,
    seed: int = 11,
    n_ads: int = 30,
    start_millis: int = DEFAULT_START_MILLIS,
    rate: float = 1.0,
) -> int:
    """Writes impressions and their conversions, sorted by ``ts_millis``; returns the count."""
    if n_impressions <= 0:
        raise ValueError(f"--impressions must be positive, got {n_impressions}")
    messages = AdSimulator(n_ads=n_ads, seed=seed).messages(n_impressions, start_millis, rate)
    if file_kind(out) == "csv":
        columns = [
            "impression_id",
            "ad_id",
            "ts_millis",
            "bid_price",
            "slot_position",
            "device",
            "user_recent_clicks",
            "converted",
        ]
        n = write_records(out, messages, columns)
    else:
        n = write_records(out, messages)
    logger.info("wrote %d ad messages (%d impressions) to %s", n, n_impressions, out)
    return n


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def _number_type(description: str, ok: Callable[[float], bool]) -> Callable[[str], float]:
    """An argparse ``type`` that parses a float and checks it, naming what was expected."""

    def parse(value: str) -> float:
        try:
            f = float(value)
        except ValueError:
            f = math.nan
        if math.isnan(f) or not ok(f):
            raise argparse.ArgumentTypeError(f"expected {description}, got {value!r}")
        return f

    return parse


_fraction = _number_type("a number in [0, 1]", lambda f: 0.0 <= f <= 1.0)
_positive = _number_type("a positive number", lambda f: f > 0)


def _add_sim_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sensors", type=int, default=300, help="number of sensors (default 300)")
    p.add_argument("--seed", type=int, default=7, help="simulator seed (default 7)")
    p.add_argument(
        "--day-seconds",
        type=_positive,
        default=600.0,
        help="real seconds per simulated day (default 600)",
    )
    p.add_argument(
        "--day-origin",
        type=float,
        default=0.0,
        metavar="EPOCH_SECONDS",
        help="instant at which a simulated day starts at 00:00 (default 0: the epoch)",
    )
    p.add_argument(
        "--drift-after",
        type=float,
        default=None,
        metavar="SECONDS",
        help="start the road-works concept drift this many seconds after the start (simulate)"
        " or after the first exported reading (export-history); default: never",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulator.publish",
        description="Publish simulated or recorded events to Pub/Sub, or export simulated data.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="publish live traffic readings (event time = now)")
    p.add_argument("--config", required=True, help="dataset config, e.g. configs/traffic.yaml")
    p.add_argument("--topic", required=True, help="projects/<project>/topics/<topic>")
    p.add_argument("--rate", type=_positive, default=30.0, help="messages per second (default 30)")
    p.add_argument(
        "--duration", type=_positive, default=None, help="seconds to run (default: until Ctrl-C)"
    )
    _add_sim_args(p)
    p.add_argument(
        "--malformed-fraction",
        type=_fraction,
        default=0.02,
        help=f"fraction of deliberately invalid messages (default 0.02; kinds: "
        f"{', '.join(MALFORMED_KINDS)})",
    )
    p.add_argument(
        "--late-fraction",
        type=_fraction,
        default=0.0,
        help="fraction of readings sent with an event time --late-seconds in the past",
    )
    p.add_argument("--late-seconds", type=_positive, default=60.0, help="default 60")
    p.add_argument(
        "--duplicate-fraction",
        type=_fraction,
        default=0.0,
        help="fraction of extra copies of already-sent messages (same id attribute)",
    )
    p.add_argument("--stats-file", default=None, help="JSON stats, rewritten every ~2 s")
    p.add_argument("--ids-file", default=None, help="append each published message id to this file")

    p = sub.add_parser("replay", help="replay a JSONL or CSV file in file order")
    p.add_argument("file", help="a .jsonl/.ndjson/.json (JSON Lines) or .csv file")
    p.add_argument("--config", required=True, help="dataset config describing the file's rows")
    p.add_argument("--topic", required=True, help="projects/<project>/topics/<topic>")
    p.add_argument(
        "--rate", type=_positive, default=100.0, help="messages per second (default 100)"
    )
    p.add_argument(
        "--rebase-time",
        action="store_true",
        help="rewrite each event time (payload and attribute) to the time it is published",
    )
    p.add_argument("--stats-file", default=None, help="JSON stats, rewritten every ~2 s")
    p.add_argument("--ids-file", default=None, help="append each published message id to this file")

    p = sub.add_parser("export-history", help="write simulated past traffic readings to a file")
    p.add_argument("--config", required=True, help="dataset config, e.g. configs/traffic.yaml")
    p.add_argument("--out", required=True, help="output .jsonl or .csv")
    p.add_argument("--events", type=int, required=True, help="number of readings")
    p.add_argument(
        "--end-time",
        default=None,
        help="ISO-8601 or epoch seconds the history ends at (default now)",
    )
    p.add_argument(
        "--rate", type=_positive, default=10.0, help="readings per second of history (default 10)"
    )
    _add_sim_args(p)

    p = sub.add_parser("export-ads", help="write sample ad impressions and conversions")
    p.add_argument(
        "--out", default="data/ad_conversions_sample.jsonl", help="output .jsonl or .csv"
    )
    p.add_argument("--impressions", type=int, default=300)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--ads", type=int, default=30)
    p.add_argument("--start-time", default="2024-01-01T00:00:00Z", help="ISO-8601 or epoch seconds")
    p.add_argument("--rate", type=_positive, default=1.0, help="impressions per second")
    return parser


class _StopOnSignal:
    """Sets ``stop`` on SIGINT/SIGTERM (a second signal aborts); restores handlers on exit."""

    def __init__(self, stop: threading.Event):
        self.stop = stop
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.stop.is_set():
            raise KeyboardInterrupt
        logger.info("signal %d: finishing (flush, final stats); again to abort", signum)
        self.stop.set()

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0 ok, 1 publish failure, 2 bad input)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "simulate":
            config = load_config(args.config)
            stop = threading.Event()
            with _StopOnSignal(stop):
                run_simulate(
                    config,
                    args.topic,
                    args.rate,
                    args.duration,
                    n_sensors=args.sensors,
                    seed=args.seed,
                    day_seconds=args.day_seconds,
                    day_origin=args.day_origin,
                    drift_after=args.drift_after,
                    injection=InjectionOptions(
                        malformed_fraction=args.malformed_fraction,
                        late_fraction=args.late_fraction,
                        late_seconds=args.late_seconds,
                        duplicate_fraction=args.duplicate_fraction,
                    ),
                    stats_file=args.stats_file,
                    ids_file=args.ids_file,
                    stop=stop,
                )
        elif args.command == "replay":
            config = load_config(args.config)
            stop = threading.Event()
            with _StopOnSignal(stop):
                run_replay(
                    args.file,
                    config,
                    args.topic,
                    args.rate,
                    rebase_time=args.rebase_time,
                    stats_file=args.stats_file,
                    ids_file=args.ids_file,
                    stop=stop,
                )
        elif args.command == "export-history":
            config = load_config(args.config)
            end = parse_time_arg(args.end_time) if args.end_time else time.time()
            export_history(
                config,
                args.out,
                args.events,
                end,
                rate=args.rate,
                n_sensors=args.sensors,
                seed=args.seed,
                day_seconds=args.day_seconds,
                day_origin=args.day_origin,
                drift_after=args.drift_after,
            )
        elif args.command == "export-ads":
            start_millis = int(round(parse_time_arg(args.start_time) * 1000))
            export_ads(
                args.out,
                args.impressions,
                seed=args.seed,
                n_ads=args.ads,
                start_millis=start_millis,
                rate=args.rate,
            )
    except ValueError as e:
        logger.error("%s", e)
        return 2
    except PublishError as e:
        logger.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
