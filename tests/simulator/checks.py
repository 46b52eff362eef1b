"""The tests' reference for "valid": the pipeline's own message validation.

A message the simulator calls valid must pass ``transforms.validation.parse_message``
(what the streaming pipeline runs), and a deliberately malformed one must fail
it; there is no second validator to drift away from the pipeline's rules.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

from dataset.config import DatasetConfig
from transforms.validation import RecordError, parse_message


def attribute_from_payload(data: bytes, config: DatasetConfig) -> str | None:
    """The payload's event time as an attribute value (ISO text as is, numbers as millis)."""
    try:
        value = json.loads(data).get(config.event_time_field)
    except (ValueError, AttributeError):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        millis = value if config.event_time_format == "epoch_millis" else value * 1000
        return str(int(millis))
    return None


def problems(
    data: bytes, config: DatasetConfig, attributes: Mapping[str, str] | None = None
) -> list[str]:
    """Why the pipeline would dead-letter a message (empty list: it accepts it).

    Args:
        data: the payload bytes.
        config: the dataset config.
        attributes: the message's attributes; the event-time attribute, when
            present, is checked against the payload as the pipeline does.
    """
    attributes = dict(attributes or {})
    attributes.setdefault(config.id_attribute, "test-message")
    if config.event_time_attribute not in attributes:
        # As the publisher does: the attribute carries the payload's event time.
        derived = attribute_from_payload(data, config)
        if derived is not None:
            attributes[config.event_time_attribute] = derived
    try:
        parse_message(data, attributes, config)
    except RecordError as e:
        return [str(e)]
    return []
