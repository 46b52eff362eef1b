"""Attach history features: per key, values from the key's previous events.

``AttachHistory`` keys feature records by the config's key and runs a
stateful DoFn that, for each record in arrival order, computes
``model.history.history_values`` from the key's state (previous events
only), stores them in ``record["history"]`` and then adds the record's
features (and inline label) to the state. The pipeline applies it before the
fan-out to inference and labeling, so the prediction and the training row
carry the same values. An event-time timer clears the state of a key idle
for ``ttl_seconds`` (bounded state). Label records (``label.source:
separate``) pass through untouched.

``AttachHistoryInOrder`` is the bounded (batch) form: it groups the feature
records by key, sorts each key's records by event time (ties: by message
id) and runs ``model.history.history_in_order`` over them, the same
function with the same expiry, so a batch job (``pipelines.batch_predict``)
gives a record the values the streaming step gives it when its key's events
arrive in event-time order.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Timestamp

from dataset.config import DatasetConfig
from model.history import DEFAULT_TTL_SECONDS, expired, history_in_order, new_state, step
from transforms.validation import Record

NAMESPACE = "history"


def _is_features(record: Record) -> bool:
    return record["kind"] == "features"


def _is_not_features(record: Record) -> bool:
    return record["kind"] != "features"


class _HistoryFn(beam.DoFn):
    """(key, feature record) -> the record with ``history`` (keyed, stateful)."""

    STATE = ReadModifyWriteStateSpec("history", PickleCoder())
    EXPIRY = TimerSpec("expiry", TimeDomain.WATERMARK)

    def __init__(self, config: DatasetConfig, ttl_seconds: float):
        self._config = config
        self._ttl = ttl_seconds
        self._attached = Metrics.counter(NAMESPACE, "records_with_history")
        self._first = Metrics.counter(NAMESPACE, "records_without_history")
        self._expired = Metrics.counter(NAMESPACE, "keys_expired")

    def process(
        self,
        element,
        state=beam.DoFn.StateParam(STATE),
        expiry=beam.DoFn.TimerParam(EXPIRY),
    ):
        _, record = element
        specs = self._config.history_features
        current = state.read()
        if current is None or expired(current, record["event_time"], self._ttl):
            current = new_state(specs)
        if current.last_time is None:
            self._first.inc()
        else:
            self._attached.inc()
        values = step(current, specs, record["features"], record["label"], record["event_time"])
        state.write(current)
        expiry.set(Timestamp.of(current.last_time + self._ttl))
        yield {**record, "history": values}

    @on_timer(EXPIRY)
    def expire(self, state=beam.DoFn.StateParam(STATE)):
        self._expired.inc()
        state.clear()


class AttachHistory(beam.PTransform):
    """Valid records -> the same records, feature records with ``history`` values."""

    def __init__(self, config: DatasetConfig, ttl_seconds: float = DEFAULT_TTL_SECONDS):
        super().__init__()
        self._config = config
        self._ttl = ttl_seconds

    def expand(self, records):
        features = records | "HistoryFeatureRecords" >> beam.Filter(_is_features)
        others = records | "HistoryOtherRecords" >> beam.Filter(_is_not_features)
        attached = (
            features
            | "KeyByEntity" >> beam.Map(lambda r: (r["key"], r)).with_output_types(tuple[str, Any])
            | "ComputeHistory" >> beam.ParDo(_HistoryFn(self._config, self._ttl))
        )
        return (attached, others) | "MergeHistoryRecords" >> beam.Flatten()


def event_order(record: Record) -> tuple[float, str]:
    """The order a key's records are replayed in by ``AttachHistoryInOrder``."""
    return record["event_time"], str(record["message_id"])


class _HistoryInOrderFn(beam.DoFn):
    """(key, all its feature records) -> each record with ``history``, in event-time order."""

    def __init__(self, config: DatasetConfig, ttl_seconds: float):
        self._config = config
        self._ttl = ttl_seconds
        self._attached = Metrics.counter(NAMESPACE, "records_with_history")
        self._first = Metrics.counter(NAMESPACE, "records_without_history")

    def process(self, element):
        _, records = element
        ordered = sorted(records, key=event_order)
        values = history_in_order(self._config, ordered, self._ttl)
        for record, history in zip(ordered, values, strict=True):
            found = any(v is not None for v in history.values())
            (self._attached if found else self._first).inc()
            yield {**record, "history": history}


class AttachHistoryInOrder(beam.PTransform):
    """Bounded feature records -> the same records with ``history``, per key in
    event-time order (a key's records are grouped in memory on one worker)."""

    def __init__(self, config: DatasetConfig, ttl_seconds: float = DEFAULT_TTL_SECONDS):
        super().__init__()
        self._config = config
        self._ttl = ttl_seconds

    def expand(self, records):
        return (
            records
            | "KeyByEntity" >> beam.Map(lambda r: (r["key"], r)).with_output_types(tuple[str, Any])
            | "GroupByEntity" >> beam.GroupByKey()
            | "ComputeHistoryInOrder" >> beam.ParDo(_HistoryInOrderFn(self._config, self._ttl))
        )
