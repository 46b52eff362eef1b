"""Parse and validate every message against the dataset config.

The record-level checks are the design documents' data-validation questions:
expected features present, no unexpected features, expected types, values in
range, expected number of values (one per feature). A message that fails any
check becomes a dead-letter row (Pub/Sub-to-BigQuery template error shape);
none is dropped silently.

Event time is assigned here, not by the Pub/Sub source: the message's
event-time attribute is parsed (RFC 3339 with a zone, or integer epoch
milliseconds as Beam's ``timestamp_attribute`` accepts), must agree with the
payload's event-time field, and must lie within ``limits`` of the message's
publish time (its timestamp from the source). Only then is the record
re-timestamped with its event time. A message whose attribute is missing or
does not parse is a dead letter instead of an exception in the source.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import math
import traceback
from collections.abc import Mapping
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import MAX_TIMESTAMP, MIN_TIMESTAMP

from dataset import times
from dataset.config import DatasetConfig, FeatureSpec
from dataset.times import utc_iso

_LOG = logging.getLogger(__name__)
NAMESPACE = "validation"
DEAD_LETTER = "dead_letter"

# Tolerated difference between the event-time attribute and the payload field.
EVENT_TIME_TOLERANCE_SECONDS = 1.0

Record = dict[str, Any]


class RecordError(ValueError):
    """A message that does not match the dataset config."""


def parse_event_time(value: Any, fmt: str) -> float:
    """``dataset.times.parse_event_time``, raising ``RecordError``."""
    try:
        return times.parse_event_time(value, fmt)
    except times.EventTimeError as e:
        raise RecordError(str(e)) from e


def check_value(spec: FeatureSpec, value: Any) -> Any:
    """Checks one feature value: one value, the right type, in its domain."""
    name = spec.name
    if value is None:
        raise RecordError(f"feature {name!r} is null")
    if isinstance(value, (list, dict)):
        n = len(value)
        raise RecordError(f"feature {name!r}: expected 1 value, got {type(value).__name__} of {n}")
    if spec.type == "bool":
        if not isinstance(value, bool):
            raise RecordError(f"feature {name!r}: expected bool, got {value!r}")
        return value
    if spec.type == "string":
        if not isinstance(value, str):
            raise RecordError(f"feature {name!r}: expected string, got {value!r}")
        if spec.values is not None and value not in spec.values:
            raise RecordError(f"feature {name!r}: {value!r} is not one of {list(spec.values)}")
        return value
    # Numeric: bool is an int subclass in Python but never a valid number here.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordError(f"feature {name!r}: expected {spec.type}, got {value!r}")
    if spec.type == "int":
        if isinstance(value, float):
            if not value.is_integer():
                raise RecordError(f"feature {name!r}: expected int, got {value!r}")
            value = int(value)
    else:
        value = float(value)
        if not math.isfinite(value):
            raise RecordError(f"feature {name!r}: {value!r} is not finite")
    if spec.min is not None and value < spec.min:
        raise RecordError(f"feature {name!r}: {value!r} is below the minimum {spec.min:g}")
    if spec.max is not None and value > spec.max:
        raise RecordError(f"feature {name!r}: {value!r} is above the maximum {spec.max:g}")
    return value


def check_label(config: DatasetConfig, value: Any) -> int | float | bool:
    """Checks a label value against the label spec."""
    label = config.label
    spec = FeatureSpec(name=label.field, type=label.type, min=label.min, max=label.max)
    checked = check_value(spec, value)
    if label.task == "binary_classification" and label.type == "int" and checked not in (0, 1):
        raise RecordError(f"label {label.field!r}: expected 0 or 1, got {checked!r}")
    return checked


def _key_value(payload: Mapping[str, Any], field: str, what: str) -> str:
    value = payload.get(field)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise RecordError(f"{what} {field!r} is missing or not a string/integer: {value!r}")
    return str(value)


def _when(seconds: float) -> str:
    """``utc_iso`` for messages; the raw number when it is not a representable time."""
    try:
        return utc_iso(seconds)
    except (ValueError, OverflowError, OSError):
        return repr(seconds)


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return type(value).__name__


def _non_finite_fields(value: Any, path: str = "") -> list[str]:
    """Paths of NaN/Infinity floats anywhere in a decoded JSON value."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [path or "(payload)"]
    if isinstance(value, dict):
        return [
            p
            for k, v in value.items()
            for p in _non_finite_fields(v, f"{path}.{k}" if path else str(k))
        ]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _non_finite_fields(v, f"{path}[{i}]")]
    return []


def validate_payload(
    payload: Any, config: DatasetConfig, message_id: str, element_time: float | None = None
) -> Record:
    """Validates one decoded JSON payload and returns the typed record.

    Args:
        payload: the decoded JSON value of the message.
        config: the dataset config.
        message_id: the message's unique id (its id attribute).
        element_time: the event time in the message's event-time attribute;
            when given, it must agree with the payload's event-time field.

    Returns:
        ``{"kind": "features"|"label", "message_id", "key", "event_time",
        "features", "label", "join_id"}``.

    Raises:
        RecordError: naming every problem found.
    """
    if not isinstance(payload, dict):
        raise RecordError(
            f"payload is a JSON {_json_kind(payload)}, expected a JSON object "
            "with the config's fields"
        )
    bad = sorted(_non_finite_fields(payload))
    if bad:
        raise RecordError(f"fields {bad} hold NaN or Infinity; only finite numbers are valid")
    label_spec = config.label
    if config.event_time_field not in payload:
        raise RecordError(f"event-time field {config.event_time_field!r} is missing")
    event_time = parse_event_time(payload[config.event_time_field], config.event_time_format)
    # Written so that a NaN attribute time disagrees (NaN compares False).
    if element_time is not None and not (
        abs(element_time - event_time) <= EVENT_TIME_TOLERANCE_SECONDS
    ):
        raise RecordError(
            f"event-time attribute {config.event_time_attribute!r} ({_when(element_time)}) "
            f"disagrees with field {config.event_time_field!r} ({_when(event_time)})"
        )
    is_label_message = label_spec.source == "separate" and label_spec.field in payload
    if is_label_message:
        allowed = {config.event_time_field, label_spec.field, label_spec.join_key}
        unexpected = sorted(set(payload) - allowed - set(config.extra_fields))
        if unexpected:
            raise RecordError(f"label message has unexpected fields {unexpected}")
        return {
            "kind": "label",
            "message_id": message_id,
            "key": None,
            "event_time": event_time,
            "features": {},
            "label": check_label(config, payload[label_spec.field]),
            "join_id": _key_value(payload, label_spec.join_key, "join key"),
        }

    problems = []
    known = {config.key_field, config.event_time_field, *config.feature_names, *config.extra_fields}
    if label_spec.source == "inline":
        known.add(label_spec.field)
    if label_spec.join_key:
        known.add(label_spec.join_key)
    missing = [f for f in config.feature_names if f not in payload]
    if missing:
        problems.append(f"missing features {missing}")
    unexpected = sorted(set(payload) - known)
    if unexpected:
        problems.append(f"unexpected features {unexpected}")
    features = {}
    for spec in config.features:
        if spec.name in payload:
            try:
                features[spec.name] = check_value(spec, payload[spec.name])
            except RecordError as e:
                problems.append(str(e))
    try:
        key = _key_value(payload, config.key_field, "key field")
    except RecordError as e:
        problems.append(str(e))
    label = None
    if label_spec.source == "inline" and payload.get(label_spec.field) is not None:
        try:
            label = check_label(config, payload[label_spec.field])
        except RecordError as e:
            problems.append(str(e))
    join_id = None
    if label_spec.join_key:
        try:
            join_id = _key_value(payload, label_spec.join_key, "join key")
        except RecordError as e:
            problems.append(str(e))
    if problems:
        raise RecordError("; ".join(problems))
    return {
        "kind": "features",
        "message_id": message_id,
        "key": key,
        "event_time": event_time,
        "features": features,
        "label": label,
        "join_id": join_id,
    }


def _reject_constant(name: str) -> float:
    raise RecordError(
        f"payload contains {name}: NaN and Infinity are not valid JSON numbers; "
        "publish finite numbers (or leave the field out)"
    )


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise RecordError(f"payload number {text} is out of range (not a finite float)")
    return value


def decode_payload(data: bytes | None, max_bytes: int) -> Any:
    """Decodes message bytes as strict JSON: UTF-8, finite numbers, within ``max_bytes``."""
    if not data:
        raise RecordError("payload is empty: expected a JSON object")
    if len(data) > max_bytes:
        raise RecordError(
            f"payload is {len(data)} bytes, over limits.max_message_bytes ({max_bytes})"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecordError(f"payload is not UTF-8: {e}") from e
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except json.JSONDecodeError as e:
        raise RecordError(f"payload is not valid JSON: {e}") from e


def attribute_event_time(attributes: Mapping[str, str], config: DatasetConfig) -> float:
    """The event time in the message's event-time attribute, as epoch seconds.

    Accepts what Beam's ``timestamp_attribute`` accepts: RFC 3339 with a zone,
    or integer milliseconds since the epoch.
    """
    name = config.event_time_attribute
    value = attributes.get(name)
    if value is None or not str(value).strip():
        raise RecordError(
            f"event-time attribute {name!r} is missing: publish each message with it "
            "set to the event time (RFC 3339 with a zone, or epoch milliseconds)"
        )
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        return int(text) / 1000.0
    try:
        return times.parse_event_time(text, "iso8601")
    except times.EventTimeError as e:
        raise RecordError(
            f"event-time attribute {name!r} does not parse ({e}); expected RFC 3339 "
            "with a zone, e.g. 2024-01-01T00:00:00Z, or integer epoch milliseconds"
        ) from e


def check_event_time_window(event_time: float, published: float, config: DatasetConfig) -> None:
    """Rejects an event time too far before or after its message's publish time."""
    age = published - event_time
    max_age = config.max_event_age_seconds
    if age > max_age:
        raise RecordError(
            f"event time {_when(event_time)} is {age:.0f} s before the message was "
            f"published ({_when(published)}), more than limits.max_event_age_seconds "
            f"({max_age}); it would be too late for the windows. Raise the limit to "
            "accept old events (e.g. a replay), or rebase their times"
        )
    ahead = event_time - published
    if ahead > config.limits.max_future_seconds:
        raise RecordError(
            f"event time {_when(event_time)} is {ahead:.0f} s after the message was "
            f"published ({_when(published)}), more than limits.max_future_seconds "
            f"({config.limits.max_future_seconds}): check the publisher's clock"
        )


def parse_message(
    data: bytes | None,
    attributes: Mapping[str, str],
    config: DatasetConfig,
    published: float | None = None,
) -> Record:
    """Decodes and validates one Pub/Sub message (payload bytes + attributes).

    Args:
        data: the payload bytes.
        attributes: the message attributes (id and event-time attributes).
        config: the dataset config.
        published: the message's publish time, epoch seconds; None skips the
            event-time window check (``limits``).
    """
    message_id = attributes.get(config.id_attribute)
    if not message_id:
        raise RecordError(f"id attribute {config.id_attribute!r} is missing")
    payload = decode_payload(data, config.limits.max_message_bytes)
    attribute_time = attribute_event_time(attributes, config)
    record = validate_payload(payload, config, message_id, attribute_time)
    if _when(record["event_time"]) == repr(record["event_time"]):
        raise RecordError(
            f"event time {record['event_time']!r} s since the epoch is not a representable "
            "date (years 1-9999)"
        )
    if published is not None:
        check_event_time_window(record["event_time"], published, config)
    return record


def dead_letter_row(
    data: bytes | str | None,
    attributes: Mapping[str, str] | None,
    error: str,
    step: str,
    stacktrace: str | None = None,
    message_id: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """One row of the dead-letter table (Pub/Sub-to-BigQuery error shape)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    payload_string = None
    if data is not None:
        payload_string = data.decode("utf-8", errors="replace")
    return {
        "timestamp": utc_iso(dt.datetime.now(dt.UTC).timestamp() if now is None else now),
        "payloadString": payload_string,
        "payloadBytes": base64.b64encode(data).decode("ascii") if data is not None else None,
        "attributes": [{"key": k, "value": v} for k, v in sorted((attributes or {}).items())],
        "errorMessage": error,
        "stacktrace": stacktrace,
        "step": step,
        "messageId": message_id,
    }


def _publish_time(timestamp: Any) -> float | None:
    """The element's timestamp from the source (publish time), None if it has none."""
    if timestamp is None or timestamp <= MIN_TIMESTAMP or timestamp >= MAX_TIMESTAMP:
        return None
    return float(timestamp)


class _ParseAndValidateFn(beam.DoFn):
    """Decodes a PubsubMessage; valid records out with event time, dead-letter rows tagged.

    No exception escapes for a record: a ``RecordError`` names what is wrong
    with the message; anything else is a bug, dead-lettered with its type and
    counted (``records_failed_unexpectedly``) rather than failing the bundle.
    """

    def __init__(self, config: DatasetConfig, step: str):
        self._config = config
        self._step = step
        self._parsed = Metrics.counter(NAMESPACE, "messages_parsed")
        self._valid = Metrics.counter(NAMESPACE, "records_valid")
        self._invalid = Metrics.counter(NAMESPACE, "records_dead_lettered")
        self._unexpected = Metrics.counter(NAMESPACE, "records_failed_unexpectedly")
        self._labels = Metrics.counter(NAMESPACE, "label_messages")

    def process(self, message, timestamp=beam.DoFn.TimestampParam):
        self._parsed.inc()
        attributes = dict(getattr(message, "attributes", None) or {})
        data = getattr(message, "data", None)
        try:
            record = parse_message(data, attributes, self._config, _publish_time(timestamp))
        except RecordError as e:
            error = str(e)
        except Exception as e:  # noqa: BLE001 - a record must never fail the bundle
            self._unexpected.inc()
            _LOG.exception("Unexpected error validating message %s", attributes)
            error = f"unexpected {type(e).__name__} while validating: {e}"
        else:
            self._valid.inc()
            if record["kind"] == "label":
                self._labels.inc()
            yield TimestampedValue(record, record["event_time"])
            return
        self._invalid.inc()
        yield TaggedOutput(
            DEAD_LETTER,
            dead_letter_row(
                data,
                attributes,
                error,
                self._step,
                traceback.format_exc(limit=3),
                attributes.get(self._config.id_attribute),
            ),
        )


class ParseAndValidate(beam.PTransform):
    """PubsubMessages -> valid records (main, timestamped with their event time)
    and dead-letter rows (``dead_letter``)."""

    def __init__(self, config: DatasetConfig):
        super().__init__()
        self._config = config

    def expand(self, messages):
        return messages | "ParseAndValidateRecords" >> beam.ParDo(
            _ParseAndValidateFn(self._config, "ParseAndValidate")
        ).with_outputs(DEAD_LETTER, main="records")
