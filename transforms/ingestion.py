"""Read events from Pub/Sub and drop redelivered duplicates.

Pub/Sub delivers at least once, and publishers retry, so one logical message
can arrive more than once with the same id attribute. On Dataflow,
``ReadFromPubSub(id_label=...)`` deduplicates at the source; the local
DirectRunner rejects ``id_label`` (NotImplementedError, Beam 2.77), so this
module also deduplicates inside the pipeline with a stateful DoFn keyed by the
id attribute (state per id, expired by a processing-time timer). The
in-pipeline step behaves the same on both runners and counts what it drops.

Messages leave ``ReadEvents`` with their publish time as timestamp; event time
is assigned by ``transforms.validation.ParseAndValidate`` once it is valid.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

import apache_beam as beam
from apache_beam.coders import BooleanCoder
from apache_beam.io.gcp.pubsub import PubsubMessage, ReadFromPubSub
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Timestamp

from dataset.config import DatasetConfig

_LOG = logging.getLogger(__name__)
NAMESPACE = "ingestion"


def message_id(message: PubsubMessage, id_attribute: str) -> str:
    """The message's dedup id: its id attribute, else the Pub/Sub message id.

    A message without either gets a key unique to itself (its payload and
    attributes), so it is never merged with another message.
    """
    attrs = message.attributes or {}
    if attrs.get(id_attribute):
        return attrs[id_attribute]
    if message.message_id:
        return f"pubsub:{message.message_id}"
    digest = hashlib.sha256(message.data or b"")
    for key, value in sorted(attrs.items()):
        digest.update(f"\0{key}={value}".encode())
    return f"payload:{digest.hexdigest()}"


class _DeduplicateFn(beam.DoFn):
    """Emits the first message per id; forgets the id ``window_seconds`` later.

    Keyed by message id: one small state cell and one processing-time timer
    per id, so no key is hot and state is bounded by the ids seen within one
    window. ``clock`` gives processing time "now" in epoch seconds (the
    timer's time domain); tests pass one aligned with TestStream's clock.

    The local legacy DirectRunner never forgets a key and visits every key's
    timers on each scheduling pass, so there this step slows down with the
    number of ids seen (``python -m benchmarks.dedup``); Dataflow has no such cost.
    """

    SEEN = ReadModifyWriteStateSpec("seen", BooleanCoder())
    EXPIRY = TimerSpec("expiry", TimeDomain.REAL_TIME)

    def __init__(self, window_seconds: int, clock: Callable[[], float]):
        self._window = window_seconds
        self._clock = clock
        self._unique = Metrics.counter(NAMESPACE, "messages_unique")
        self._duplicates = Metrics.counter(NAMESPACE, "duplicates_dropped")
        self._expired = Metrics.counter(NAMESPACE, "dedup_ids_expired")

    def process(
        self,
        element: tuple[str, PubsubMessage],
        seen=beam.DoFn.StateParam(SEEN),
        expiry=beam.DoFn.TimerParam(EXPIRY),
    ):
        _, message = element
        if seen.read():
            self._duplicates.inc()
            return
        seen.write(True)
        expiry.set(Timestamp.of(self._clock() + self._window))
        self._unique.inc()
        yield message

    @on_timer(EXPIRY)
    def expire(self, seen=beam.DoFn.StateParam(SEEN)):
        seen.clear()
        self._expired.inc()


class DeduplicateMessages(beam.PTransform):
    """Drops messages whose id was already seen within ``window_seconds`` (processing time).

    Args:
        id_attribute: the attribute holding the message's unique id.
        window_seconds: how long an id is remembered after its first message.
        clock: processing-time "now", epoch seconds (default: the wall clock).
    """

    def __init__(
        self, id_attribute: str, window_seconds: int, clock: Callable[[], float] = time.time
    ):
        super().__init__()
        self._id_attribute = id_attribute
        self._window_seconds = window_seconds
        self._clock = clock

    def expand(self, messages):
        id_attribute = self._id_attribute
        return (
            messages
            | "KeyByMessageId"
            >> beam.Map(lambda m: (message_id(m, id_attribute), m)).with_output_types(
                tuple[str, Any]
            )
            | "DropDuplicates" >> beam.ParDo(_DeduplicateFn(self._window_seconds, self._clock))
        )


class ReadEvents(beam.PTransform):
    """Reads PubsubMessages, timestamped with their publish time, deduplicated.

    The source is read without ``timestamp_attribute``: a message whose
    attribute does not parse would otherwise fail the source itself (the local
    runner drops the whole pull; Dataflow retries it forever).
    ``ParseAndValidate`` checks the attribute and assigns event time.

    Args:
        subscription: ``projects/<p>/subscriptions/<s>``.
        config: the dataset config (the id attribute name).
        dedup_window_seconds: how long an id is remembered.
        source_dedup: also pass ``id_label`` to the source (Dataflow only).
        source: replaces ``ReadFromPubSub`` (same step name): a transform from
            the pipeline's root to PubsubMessages timestamped with their
            publish time, for in-process runs such as ``benchmarks.batch_cost``.
    """

    def __init__(
        self,
        subscription: str,
        config: DatasetConfig,
        dedup_window_seconds: int,
        source_dedup: bool,
        source: beam.PTransform | None = None,
    ):
        super().__init__()
        self._source = source
        self._subscription = subscription
        self._config = config
        self._dedup_window_seconds = dedup_window_seconds
        self._source_dedup = source_dedup

    def expand(self, pbegin):
        cfg = self._config
        source = self._source or ReadFromPubSub(
            subscription=self._subscription,
            with_attributes=True,
            id_label=cfg.id_attribute if self._source_dedup else None,
        )
        return (
            pbegin
            | "ReadFromPubSub" >> source
            | "Deduplicate" >> DeduplicateMessages(cfg.id_attribute, self._dedup_window_seconds)
        )
