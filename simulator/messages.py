"""Messages: event times of records, building valid messages, malforming them on purpose.

Every message's data is compact JSON and its attributes are
``{config.event_time_attribute: RFC 3339 UTC event time (milliseconds),
config.id_attribute: unique id}``. Malformed messages (``malform``) carry valid
attributes too; a duplicate reuses the id attribute of the message it repeats.
Event times are read with the pipeline's
own parser (``dataset.times.parse_event_time``: an ISO-8601 time must carry a
zone) and written with ``dataset.times.format_event_time``. Pure functions.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import uuid
from typing import Any

from dataset import times
from dataset.config import DatasetConfig

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


class EventTimeProblem(ValueError):
    """A record whose event time cannot be used; ``reason`` is the skip reason."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def event_time_of(record: dict, config: DatasetConfig, *, assume_utc: bool = False) -> float:
    """Reads a record's event time (epoch seconds) with the pipeline's rules.

    Args:
        record: a payload.
        config: the dataset config (field and format).
        assume_utc: take an ISO-8601 time without a zone as UTC (the pipeline
            itself rejects such times; only for an explicit ``--assume-utc``).

    Raises:
        EventTimeProblem: ``reason`` is ``missing_event_time``,
            ``time_without_zone`` or ``bad_event_time``.
    """
    field = config.event_time_field
    if field not in record:
        raise EventTimeProblem("missing_event_time", f"missing event-time field {field!r}")
    value = record[field]
    fmt = config.event_time_format
    try:
        if assume_utc:
            return times.parse_utc_assumed(value, fmt)
        return times.parse_event_time(value, fmt)
    except times.EventTimeError as e:
        if fmt == "iso8601" and isinstance(value, str) and times.has_zone(value) is False:
            raise EventTimeProblem(
                "time_without_zone",
                f"event time {value!r} has no zone, so the pipeline would dead-letter it: "
                "add one to the file (e.g. 2024-01-01T00:00:00Z), or replay with "
                "--assume-utc (or --rebase-time)",
            ) from None
        raise EventTimeProblem("bad_event_time", str(e)) from None


def with_event_time(record: dict, config: DatasetConfig, t: float) -> dict:
    """A copy of ``record`` whose event-time field says ``t`` in the config's format."""
    out = dict(record)
    out[config.event_time_field] = times.format_event_time(t, config.event_time_format)
    return out


def rebase_record(record: dict, config: DatasetConfig, t: float) -> dict:
    """Rewrites a replayed record's event time to ``t`` (the time it is published)."""
    return with_event_time(record, config, t)


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
    return {
        config.event_time_attribute: times.format_event_time(event_time, "iso8601"),
        config.id_attribute: message_id,
    }


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


def check_config_matches(config: DatasetConfig, sample: dict, what: str) -> None:
    """Raises ValueError unless every field the config needs is in ``sample``."""
    needed = [config.key_field, config.event_time_field, *config.feature_names, config.label.field]
    missing = [n for n in needed if n not in sample]
    if missing:
        raise ValueError(
            f"config {config.source_path or config.name!r} does not describe {what}: "
            f"its fields {missing} are not produced (produced: {sorted(sample)})"
        )
