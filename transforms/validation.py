"""Parse and validate every message against the dataset config.

The record-level checks are the design documents' data-validation questions:
expected features present, no unexpected features, expected types, values in
range, expected number of values (one per feature). A message that fails any
check becomes a dead-letter row (Pub/Sub-to-BigQuery template error shape);
none is dropped silently.
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


def validate_payload(
    payload: Any, config: DatasetConfig, message_id: str, element_time: float | None = None
) -> Record:
    """Validates one decoded JSON payload and returns the typed record.

    Args:
        payload: the decoded JSON value of the message.
        config: the dataset config.
        message_id: the message's unique id (its id attribute).
        element_time: the event time Beam assigned from the message attribute;
            when given, it must agree with the payload's event-time field.

    Returns:
        ``{"kind": "features"|"label", "message_id", "key", "event_time",
        "features", "label", "join_id"}``.

    Raises:
        RecordError: naming every problem found.
    """
    if not isinstance(payload, dict):
        raise RecordError(f"expected a JSON object, got {type(payload).__name__}")
    label_spec = config.label
    if config.event_time_field not in payload:
        raise RecordError(f"event-time field {config.event_time_field!r} is missing")
    event_time = parse_event_time(payload[config.event_time_field], config.event_time_format)
    if element_time is not None and abs(element_time - event_time) > EVENT_TIME_TOLERANCE_SECONDS:
        raise RecordError(
            f"event-time attribute {config.event_time_attribute!r} ({utc_iso(element_time)}) "
            f"disagrees with field {config.event_time_field!r} ({utc_iso(event_time)})"
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


def parse_message(
    data: bytes, attributes: Mapping[str, str], config: DatasetConfig, element_time: float | None
) -> Record:
    """Decodes and validates one Pub/Sub message (payload bytes + attributes)."""
    message_id = attributes.get(config.id_attribute)
    if not message_id:
        raise RecordError(f"id attribute {config.id_attribute!r} is missing")
    try:
        payload = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise RecordError(f"payload is not UTF-8: {e}") from e
    except json.JSONDecodeError as e:
        raise RecordError(f"payload is not valid JSON: {e}") from e
    return validate_payload(payload, config, message_id, element_time)


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


class _ParseAndValidateFn(beam.DoFn):
    """Decodes a PubsubMessage; valid records out, dead-letter rows tagged."""

    def __init__(self, config: DatasetConfig, step: str):
        self._config = config
        self._step = step
        self._parsed = Metrics.counter(NAMESPACE, "messages_parsed")
        self._valid = Metrics.counter(NAMESPACE, "records_valid")
        self._invalid = Metrics.counter(NAMESPACE, "records_dead_lettered")
        self._labels = Metrics.counter(NAMESPACE, "label_messages")

    def process(self, message, timestamp=beam.DoFn.TimestampParam):
        self._parsed.inc()
        attributes = dict(message.attributes or {})
        try:
            record = parse_message(message.data, attributes, self._config, float(timestamp))
        except RecordError as e:
            self._invalid.inc()
            yield TaggedOutput(
                DEAD_LETTER,
                dead_letter_row(
                    message.data,
                    attributes,
                    str(e),
                    self._step,
                    traceback.format_exc(limit=3),
                    attributes.get(self._config.id_attribute),
                ),
            )
            return
        self._valid.inc()
        if record["kind"] == "label":
            self._labels.inc()
        yield record


class ParseAndValidate(beam.PTransform):
    """PubsubMessages -> valid records (main) and dead-letter rows (``dead_letter``)."""

    def __init__(self, config: DatasetConfig):
        super().__init__()
        self._config = config

    def expand(self, messages):
        return messages | "ParseAndValidateRecords" >> beam.ParDo(
            _ParseAndValidateFn(self._config, "ParseAndValidate")
        ).with_outputs(DEAD_LETTER, main="records")
