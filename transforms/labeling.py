"""Turn valid records into labeled training examples.

Inline labels (``label.source: inline``) make a training example straight
away. Separate labels (``label.source: separate``, e.g. ad conversions) arrive
in a later message that shares ``label.join_key`` with the feature message; a
stateful DoFn keyed by that id holds whichever side came first, joins them
when the other lands, and after ``max_delay_seconds`` of event time either
emits a negative example (``negative_on_timeout``) or gives up on it. A label
whose features never arrive, or a second label/feature message for an
already joined id, becomes a dead-letter row: nothing is dropped silently.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import apache_beam as beam
from apache_beam.coders import BooleanCoder, PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Timestamp

from dataset.config import DatasetConfig
from dataset.times import utc_iso
from transforms.validation import DEAD_LETTER, Record, dead_letter_row

NAMESPACE = "labeling"
STEP = "JoinLabels"


def training_row(
    config: DatasetConfig,
    features: Record,
    label: Any,
    label_time: float | None,
    label_source: str,
    now: float | None = None,
) -> dict[str, Any]:
    """One row of the training-examples table.

    The record's history values (``record["history"]``, computed when it was
    predicted) are stored as columns, so the trainer encodes exactly what
    serving saw.
    """
    if now is None:
        now = dt.datetime.now(dt.UTC).timestamp()
    example_id = features["join_id"] or features["message_id"]
    history = features.get("history") or {}
    return {
        "example_id": example_id,
        config.key_field: features["key"],
        "event_time": utc_iso(features["event_time"]),
        **features["features"],
        **{spec.name: history.get(spec.name) for spec in config.history_features},
        config.label.field: label,
        "label_time": utc_iso(label_time) if label_time is not None else None,
        "label_source": label_source,
        "ingestion_id": features["message_id"],
        "ingested_at": utc_iso(now),
    }


def record_payload(config: DatasetConfig, record: Record) -> str:
    """The JSON payload a validated record came from (for dead-letter rows)."""
    body: dict[str, Any] = {config.event_time_field: utc_iso(record["event_time"])}
    if record["kind"] == "label":
        body[config.label.join_key] = record["join_id"]
        body[config.label.field] = record["label"]
    else:
        body[config.key_field] = record["key"]
        if record["join_id"] is not None:
            body[config.label.join_key] = record["join_id"]
        body.update(record["features"])
    return json.dumps(body, sort_keys=True)


class _JoinLabelFn(beam.DoFn):
    """Joins feature and label records sharing a join id (keyed input)."""

    FEATURES = ReadModifyWriteStateSpec("features", PickleCoder())
    LABEL = ReadModifyWriteStateSpec("label", PickleCoder())
    JOINED = ReadModifyWriteStateSpec("joined", BooleanCoder())
    EXPIRY = TimerSpec("expiry", TimeDomain.WATERMARK)

    def __init__(self, config: DatasetConfig):
        self._config = config
        self._joined = Metrics.counter(NAMESPACE, "labels_joined")
        self._timeouts = Metrics.counter(NAMESPACE, "negatives_on_timeout")
        self._expired = Metrics.counter(NAMESPACE, "features_expired_unlabeled")
        self._orphans = Metrics.counter(NAMESPACE, "labels_orphaned")
        self._conflicts = Metrics.counter(NAMESPACE, "join_conflicts")
        self._delay = Metrics.distribution(NAMESPACE, "label_delay_seconds")

    def _dead_letter(self, record: Record, error: str):
        cfg = self._config
        return TaggedOutput(
            DEAD_LETTER,
            dead_letter_row(
                record_payload(cfg, record),
                {cfg.id_attribute: record["message_id"]},
                error,
                STEP,
                message_id=record["message_id"],
            ),
        )

    def _join(self, features: Record, label: Record):
        self._joined.inc()
        self._delay.update(int(max(label["event_time"] - features["event_time"], 0)))
        return training_row(self._config, features, label["label"], label["event_time"], "message")

    def process(
        self,
        element,
        features_state=beam.DoFn.StateParam(FEATURES),
        label_state=beam.DoFn.StateParam(LABEL),
        joined_state=beam.DoFn.StateParam(JOINED),
        expiry=beam.DoFn.TimerParam(EXPIRY),
    ):
        join_id, record = element
        held = features_state.read() if record["kind"] == "features" else label_state.read()
        if joined_state.read() or held is not None:
            self._conflicts.inc()
            yield self._dead_letter(
                record, f"a {record['kind']} message for join key {join_id!r} was already received"
            )
            return
        deadline = Timestamp.of(record["event_time"] + self._config.label.max_delay_seconds)
        if record["kind"] == "features":
            label = label_state.read()
            if label is not None:
                yield self._join(record, label)
                joined_state.write(True)
                label_state.clear()
            else:
                features_state.write(record)
            expiry.set(deadline)
        else:
            features = features_state.read()
            if features is not None:
                yield self._join(features, record)
                joined_state.write(True)
                features_state.clear()
            else:
                label_state.write(record)
                expiry.set(deadline)

    @on_timer(EXPIRY)
    def expire(
        self,
        fire_time=beam.DoFn.TimestampParam,
        features_state=beam.DoFn.StateParam(FEATURES),
        label_state=beam.DoFn.StateParam(LABEL),
        joined_state=beam.DoFn.StateParam(JOINED),
    ):
        features = features_state.read()
        label = label_state.read()
        if features is not None:
            if self._config.label.negative_on_timeout:
                self._timeouts.inc()
                yield training_row(self._config, features, 0, float(fire_time), "timeout")
            else:
                self._expired.inc()
        if label is not None:
            self._orphans.inc()
            yield self._dead_letter(
                label,
                f"no feature message with {self._config.label.join_key}={label['join_id']!r} "
                f"arrived within {self._config.label.max_delay_seconds} s of the label",
            )
        features_state.clear()
        label_state.clear()
        joined_state.clear()


class _InlineExamplesFn(beam.DoFn):
    def __init__(self, config: DatasetConfig):
        self._config = config
        self._examples = Metrics.counter(NAMESPACE, "inline_examples")
        self._unlabeled = Metrics.counter(NAMESPACE, "unlabeled_records")

    def process(self, record: Record):
        if record["label"] is None:
            self._unlabeled.inc()
            return
        self._examples.inc()
        yield training_row(self._config, record, record["label"], record["event_time"], "inline")


class BuildTrainingExamples(beam.PTransform):
    """Valid records -> training rows (main) and dead-letter rows (``dead_letter``)."""

    def __init__(self, config: DatasetConfig):
        super().__init__()
        self._config = config

    def expand(self, records):
        cfg = self._config
        if cfg.label.source == "inline":
            # Inline labels never fail to join; the dead-letter output stays empty.
            joined = records | "InlineExamples" >> beam.ParDo(_InlineExamplesFn(cfg)).with_outputs(
                DEAD_LETTER, main="examples"
            )
            return {"examples": joined.examples, DEAD_LETTER: joined[DEAD_LETTER]}
        joined = (
            records
            | "KeyByJoinId" >> beam.Map(lambda r: (r["join_id"], r))
            | "JoinLabels"
            >> beam.ParDo(_JoinLabelFn(cfg)).with_outputs(DEAD_LETTER, main="examples")
        )
        return {"examples": joined.examples, DEAD_LETTER: joined[DEAD_LETTER]}
