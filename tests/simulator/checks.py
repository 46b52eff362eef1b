"""The tests' reference for "valid": the pipeline's own message validation.

A message the simulator calls valid must pass ``transforms.validation.parse_message``
(what the streaming pipeline runs), and a deliberately malformed one must fail
it; there is no second validator to drift away from the pipeline's rules.
"""

from __future__ import annotations

from collections.abc import Mapping

from dataset.config import DatasetConfig
from dataset.times import parse_event_time
from transforms.validation import RecordError, parse_message


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
    element_time = None
    if config.event_time_attribute in attributes:
        element_time = parse_event_time(attributes[config.event_time_attribute], "iso8601")
    try:
        parse_message(data, attributes, config, element_time)
    except RecordError as e:
        return [str(e)]
    return []
