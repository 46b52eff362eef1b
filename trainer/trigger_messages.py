"""Retrain trigger messages: parsing and validation, and the run each one starts.

The streaming pipeline publishes one JSON trigger per retraining decision
(``transforms.triggers``); the launcher turns each valid trigger into one
training run whose id is derived from the trigger id (``run_id_for``), so a
redelivered trigger maps to the same run.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any

from dataset.times import to_datetime

# The streaming pipeline's reasons (``transforms.triggers``), then the
# dashboard's retrain-now button and the file-arrival trigger.
TRIGGER_REASONS = ("new_data", "schedule", "quality", "manual", "file")
_TRIGGER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


class MalformedTrigger(ValueError):
    """A trigger message that cannot be turned into a run."""


@dataclasses.dataclass(frozen=True)
class Trigger:
    """A parsed retrain trigger (the JSON the streaming pipeline publishes)."""

    trigger_id: str
    dataset: str
    reason: str
    sequence: int
    new_examples: int | None = None
    total_examples: int | None = None
    event_time_start: str | None = None
    event_time_end: str | None = None
    details: Any = None
    created_at: str | None = None


def parse_trigger(data: bytes | str, attributes: Mapping[str, str] | None, dataset: str) -> Trigger:
    """Parses and validates one trigger message.

    Args:
        data: the message body: a JSON object.
        attributes: the message attributes; a ``trigger_id`` attribute, when
            present, must equal the body's.
        dataset: the config's dataset name; a trigger for another dataset is refused.

    Raises:
        MalformedTrigger: naming what is wrong.
    """
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MalformedTrigger(f"not JSON: {e}") from None
    if not isinstance(body, dict):
        raise MalformedTrigger(f"expected a JSON object, got {type(body).__name__}")
    trigger_id = body.get("trigger_id")
    if not isinstance(trigger_id, str) or not _TRIGGER_ID_RE.match(trigger_id):
        raise MalformedTrigger(
            f"trigger_id {trigger_id!r} is missing or invalid (letters, digits, _.:- ; <= 128)"
        )
    attr_id = (attributes or {}).get("trigger_id")
    if attr_id is not None and attr_id != trigger_id:
        raise MalformedTrigger(f"attribute trigger_id {attr_id!r} != body trigger_id")
    if body.get("dataset") != dataset:
        raise MalformedTrigger(
            f"trigger {trigger_id} is for dataset {body.get('dataset')!r}, not {dataset!r}"
        )
    reason = body.get("reason")
    if reason not in TRIGGER_REASONS:
        raise MalformedTrigger(
            f"trigger {trigger_id}: reason {reason!r} not in {', '.join(TRIGGER_REASONS)}"
        )
    sequence = body.get("sequence")
    if isinstance(sequence, bool) or not isinstance(sequence, int):
        raise MalformedTrigger(f"trigger {trigger_id}: sequence {sequence!r} is not an integer")
    counts = {}
    for key in ("new_examples", "total_examples"):
        value = body.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise MalformedTrigger(f"trigger {trigger_id}: {key} {value!r} is not an integer")
        counts[key] = value
    times = {}
    for key in ("event_time_start", "event_time_end", "created_at"):
        value = body.get(key)
        if value is not None:
            try:
                to_datetime(value)
            except (TypeError, ValueError):
                raise MalformedTrigger(
                    f"trigger {trigger_id}: {key} {value!r} is not a time"
                ) from None
        times[key] = value
    return Trigger(
        trigger_id=trigger_id,
        dataset=dataset,
        reason=reason,
        sequence=sequence,
        details=body.get("details"),
        **counts,
        **times,
    )


def run_id_for(trigger_id: str) -> str:
    """The run id of a trigger's run: deterministic, so a redelivery maps to the same run."""
    return f"run-{trigger_id}"


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run to start (queued in ``training_runs``)."""

    run_id: str
    trigger_id: str
    dataset: str
    reason: str | None = None
    # Epoch seconds the launcher pulled the trigger (None for a recovered run);
    # the trainer times its "launch" phase from it.
    received_at: float | None = None

    @classmethod
    def from_trigger(cls, trigger: Trigger, received_at: float | None = None) -> Run:
        return cls(
            run_id_for(trigger.trigger_id),
            trigger.trigger_id,
            trigger.dataset,
            trigger.reason,
            received_at,
        )
