"""Retrain requests from outside the stream: the dashboard's button and the file trigger.

A request is the SAME trigger the streaming pipeline emits
(``transforms.triggers.fire`` builds one; ``trigger_message`` turns it into
the Pub/Sub message): one row in ``retrain_triggers`` and one message on the
retrain topic, so the launcher (``trainer.launcher``) handles it like any
other trigger and records exactly one run (``run-<trigger_id>``).

Ids: ``<dataset>-<reason>-<UTC stamp><hex>`` for a manual request (each
click is a new run); the file trigger passes its own id derived from the
file's content, so loading the same file again maps to the same run.
``sequence`` is 0: requests are not part of the pipeline's per-launch
sequence (``initial_state_from_bigquery`` reads only the pipeline's reasons).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import secrets
from collections.abc import Mapping
from typing import Any

from dataset.config import DatasetConfig
from dataset.tables import TRIGGER_SCHEMA
from dataset.times import utc_iso
from trainer.runs import insert_typed_rows
from trainer.trigger_messages import TRIGGER_REASONS, parse_trigger

logger = logging.getLogger(__name__)

PUBLISH_TIMEOUT_SECONDS = 30.0


def new_trigger(
    config: DatasetConfig,
    reason: str,
    *,
    trigger_id: str | None = None,
    new_examples: int | None = None,
    event_time_start: float | None = None,
    event_time_end: float | None = None,
    details: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """A trigger dict with the keys ``transforms.triggers.fire`` gives, checked by the parser.

    Raises:
        ValueError: for a reason the launcher would refuse, or an invalid id.
    """
    if reason not in TRIGGER_REASONS:
        raise ValueError(f"reason {reason!r} not in {', '.join(TRIGGER_REASONS)}")
    if now is None:
        now = dt.datetime.now(dt.UTC).timestamp()
    if trigger_id is None:
        stamp = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y%m%dT%H%M%S")
        trigger_id = f"{config.name}-{reason}-{stamp}{secrets.token_hex(2)}"
    trigger = {
        "trigger_id": trigger_id,
        "dataset": config.name,
        "reason": reason,
        "sequence": 0,
        "new_examples": new_examples,
        "total_examples": None,
        "event_time_start": utc_iso(event_time_start) if event_time_start is not None else None,
        "event_time_end": utc_iso(event_time_end) if event_time_end is not None else None,
        "details": json.dumps(dict(details), sort_keys=True) if details else None,
        "created_at": utc_iso(now),
    }
    # The launcher's own parser: what it would refuse is refused here, before publishing.
    parse_trigger(json.dumps(trigger), {"trigger_id": trigger_id}, config.name)
    return trigger


def submit_trigger(
    trigger: Mapping[str, Any],
    *,
    bq_client,
    publisher,
    project: str,
    bq_dataset: str,
    config: DatasetConfig,
    topic: str,
) -> None:
    """Records the trigger in ``retrain_triggers`` and publishes it to the retrain topic.

    Args:
        trigger: from ``new_trigger``.
        bq_client: a ``google.cloud.bigquery.Client``.
        publisher: a ``pubsub_v1.PublisherClient``.
        project: the BigQuery project.
        bq_dataset: the BigQuery dataset.
        config: the dataset config.
        topic: ``projects/<p>/topics/<t>``: the retrain topic the launcher subscribes to.

    Raises:
        RuntimeError: if BigQuery refused the row; nothing was published then.
    """
    from transforms.triggers import trigger_message

    table = f"{project}.{bq_dataset}.{config.tables.retrain_triggers}"
    insert_typed_rows(bq_client, table, [trigger], TRIGGER_SCHEMA)
    message = trigger_message(dict(trigger))
    publisher.publish(topic, message.data, **message.attributes).result(
        timeout=PUBLISH_TIMEOUT_SECONDS
    )
    logger.info("published %s trigger %s to %s", trigger["reason"], trigger["trigger_id"], topic)
