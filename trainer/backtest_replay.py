"""The backtest's input: a record file replayed as the live loop would see it.

``load_replay`` reads a JSON Lines / CSV file with the publisher's record
reader (``simulator.records.read_records``), validates every row with the
pipeline's own validation (``transforms.validation.validate_payload``; a row
that fails is counted as a dead letter, by reason) and joins labels the way
``transforms.labeling`` does:

* ``label.source: inline``: the label lands with the features, at their event time;
* ``label.source: separate``: a label message joins the feature message with
  the same ``join_key`` when their event times are at most
  ``max_delay_seconds`` apart, and lands at the later of the two; a feature
  message without one becomes a negative at ``event_time + max_delay_seconds``
  with ``negative_on_timeout`` (else it is never labelled); a label without
  features, or a second message for a joined id, is a dead letter.

History features (``history_features``) are computed with
``model.history.history_in_order`` over the feature rows in event-time order
(the streaming step's values when events arrive in order) and stored in the
training rows, as the pipeline stores them.

Training rows are built by ``transforms.labeling.training_row`` (the training
table's columns), with timestamps as UTC datetimes, as the trainer reads them.
Pure: no model, no Beam.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import Counter
from typing import Any

import numpy as np

from dataset.config import DatasetConfig
from dataset.times import to_datetime
from model.features import encode_batch, model_inputs
from model.history import history_in_order
from simulator.records import read_records
from transforms.labeling import training_row
from transforms.validation import RecordError, validate_payload

TIMESTAMP_COLUMNS = ("event_time", "label_time", "ingested_at")
MAX_INVALID_EXAMPLES = 5


@dataclasses.dataclass
class Replay:
    """Valid feature rows in event-time order, with when (and whether) each label lands.

    Attributes:
        times: event time of each feature row (epoch seconds), ascending.
        keys: the entity key of each row (``key_field``).
        example_ids: each row's example id (join id or message id).
        x: the encoded features (``model.features.encode_batch``), one row each.
        labels: each row's label as a float, NaN if it is never labelled.
        land_times: when each label lands (epoch seconds), NaN if never.
        training_rows: each row's training-table row (None if never labelled).
        warmup_rows: the first rows, used to train the first model and not scored:
            the requested share, extended to every row up to ``warmup_end``.
        warmup_end: when the first model serves: the last of the requested
            warm-up rows' event times and label landings.
        invalid_rows: rows counted as dead letters.
        invalid_reasons: dead letters by reason.
        invalid_examples: the first few dead letters ``{line, error}``.
        label_rows: label messages in the file (``source: separate``).
    """

    times: np.ndarray
    keys: list[str]
    example_ids: list[str]
    x: np.ndarray
    labels: np.ndarray
    land_times: np.ndarray
    training_rows: list[dict[str, Any] | None]
    warmup_rows: int
    warmup_end: float
    invalid_rows: int = 0
    invalid_reasons: dict[str, int] = dataclasses.field(default_factory=dict)
    invalid_examples: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    label_rows: int = 0

    @property
    def rows(self) -> int:
        return len(self.times)

    def bootstrap_indexes(self) -> list[int]:
        """Warm-up rows whose label landed by the end of the warm-up (the first model's data)."""
        end = self.warmup_end
        return [
            i
            for i in range(self.warmup_rows)
            if not math.isnan(self.land_times[i]) and self.land_times[i] <= end
        ]

    def scored_indexes(self) -> np.ndarray:
        """Rows after the warm-up that get a label: the rows every policy is scored on."""
        idx = np.arange(self.warmup_rows, self.rows)
        return idx[~np.isnan(self.labels[idx])]


def _typed(row: dict[str, Any]) -> dict[str, Any]:
    return {
        k: to_datetime(v) if k in TIMESTAMP_COLUMNS and v is not None else v for k, v in row.items()
    }


class _DeadLetters:
    def __init__(self) -> None:
        self.reasons: Counter[str] = Counter()
        self.examples: list[dict[str, Any]] = []

    def add(self, reason: str, line: int | None, error: str) -> None:
        self.reasons[reason] += 1
        if len(self.examples) < MAX_INVALID_EXAMPLES:
            self.examples.append({"line": line, "reason": reason, "error": error})


def load_replay(path: str, config: DatasetConfig, warmup_fraction: float = 0.1) -> Replay:
    """Reads, validates and labels a record file (see the module docstring).

    Args:
        path: a ``.jsonl``/``.ndjson``/``.json`` or ``.csv`` file of messages.
        config: the dataset config describing them.
        warmup_fraction: the share of feature rows (first by event time) used
            to train the first model.

    Raises:
        ValueError: an unreadable file, a bad fraction, or too few valid rows.
    """
    if not 0.0 < warmup_fraction < 1.0:
        raise ValueError(f"the warm-up fraction must be in (0, 1), got {warmup_fraction}")
    dead = _DeadLetters()
    features: list[tuple[float, int, dict]] = []
    labels: list[tuple[float, int, dict]] = []
    name = os.path.basename(path)
    for line, payload, problem in read_records(path, config):
        if payload is None:
            dead.add(problem, line, problem)
            continue
        try:
            record = validate_payload(payload, config, f"{name}:{line}")
        except RecordError as e:
            dead.add("invalid_record", line, str(e))
            continue
        (labels if record["kind"] == "label" else features).append(
            (record["event_time"], line, record)
        )
    features.sort(key=lambda item: (item[0], item[1]))
    labels.sort(key=lambda item: (item[0], item[1]))
    if config.label.source == "separate":
        features = _join_separate(config, features, labels, dead)
    else:
        features = [(t, line, rec, rec["label"], t, "inline", t) for t, line, rec in features]
    if len(features) < 2:
        raise ValueError(f"{path}: {len(features)} valid feature rows; a backtest needs more")
    warmup = min(len(features) - 1, max(1, int(round(len(features) * warmup_fraction))))
    # The first model trains once the warm-up rows' labels landed (delayed labels
    # push this out); every row up to then belongs to the warm-up.
    times = np.asarray([item[0] for item in features], dtype=np.float64)
    landed = [item[4] for item in features[:warmup] if item[3] is not None]
    warmup_end = max([float(times[warmup - 1]), *landed])
    warmup = int(np.searchsorted(times, warmup_end, side="right"))
    records = [item[2] for item in features]
    if config.history_features:
        # The streaming step's values, in event-time order (model.history).
        history = history_in_order(config, records)
        records = [{**rec, "history": h} for rec, h in zip(records, history, strict=True)]
        features = [
            (*item[:2], rec, *item[3:]) for item, rec in zip(features, records, strict=True)
        ]
    rows: list[dict[str, Any] | None] = []
    label_values, land_times = [], []
    for _, _, rec, label, land, source, label_time in features:
        if label is None:
            rows.append(None)
            label_values.append(math.nan)
            land_times.append(math.nan)
            continue
        rows.append(_typed(training_row(config, rec, label, label_time, source, now=land)))
        label_values.append(float(label))
        land_times.append(land)
    return Replay(
        times=times,
        keys=[rec["key"] for rec in records],
        example_ids=[rec["join_id"] or rec["message_id"] for rec in records],
        x=encode_batch([model_inputs(rec) for rec in records], config),
        labels=np.asarray(label_values, dtype=np.float64),
        land_times=np.asarray(land_times, dtype=np.float64),
        training_rows=rows,
        warmup_rows=warmup,
        warmup_end=warmup_end,
        invalid_rows=sum(dead.reasons.values()),
        invalid_reasons=dict(sorted(dead.reasons.items())),
        invalid_examples=dead.examples,
        label_rows=len(labels),
    )


def _join_separate(config: DatasetConfig, features, labels, dead: _DeadLetters) -> list[tuple]:
    """``(t, line, record, label, land_time, source, label_time)`` per feature row.

    ``_JoinLabelFn``'s rules: the label's own event time is the row's label time.
    """
    delay = config.label.max_delay_seconds
    by_id: dict[str, int] = {}
    kept = []
    for t, line, rec in features:
        if rec["join_id"] in by_id:
            dead.add("join_conflict", line, f"a second feature message for {rec['join_id']!r}")
            continue
        by_id[rec["join_id"]] = len(kept)
        kept.append([t, line, rec, None, None, None, None])
    for t, line, rec in labels:
        i = by_id.get(rec["join_id"])
        if i is None or abs(t - kept[i][0]) > delay:
            dead.add(
                "label_without_features",
                line,
                f"no feature message with {config.label.join_key}={rec['join_id']!r} "
                f"within {delay} s of the label",
            )
            continue
        if kept[i][3] is not None:
            dead.add("join_conflict", line, f"a second label message for {rec['join_id']!r}")
            continue
        kept[i][3:7] = [rec["label"], max(t, kept[i][0]), "message", t]
    out = []
    for t, line, rec, label, land, source, label_time in kept:
        if label is None and config.label.negative_on_timeout:
            label, land, source, label_time = 0, t + delay, "timeout", t + delay
        out.append((t, line, rec, label, land, source, label_time))
    return out
