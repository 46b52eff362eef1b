"""History features: values computed from a key's PREVIOUS events, never the current one.

The one implementation used by the streaming pipeline (``transforms.history``,
a stateful step keyed by the config's key), the backtest
(``trainer.backtest_replay``, in event-time order) and, through the values
stored in each training row, the trainer. Per key, a ``HistoryState`` holds
a bounded deque of the last N values of each source feature (N: the largest
``last`` that reads it), the last N labels (inline labels only) and the
latest event time seen.

For every feature record, in order: ``history_values`` (from the state: the
previous events only), then ``update_with_event`` and, for an inline label,
``update_with_label``. So the current row's features and label never enter
its own history values.

Missing history (a key's first event, or a key whose state expired after
``ttl_seconds`` without events) gives ``None``; ``model.features`` encodes
``None`` as a defined default (see ``history_default``).
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from dataset.config import DatasetConfig
from dataset.history_spec import HistoryFeatureSpec

# Event time a key may stay idle before its history is dropped (bounded state).
DEFAULT_TTL_SECONDS = 24 * 3600

Specs = Sequence[HistoryFeatureSpec]


@dataclasses.dataclass
class HistoryState:
    """One key's recent events: bounded deques of source values and labels."""

    values: dict[str, deque] = dataclasses.field(default_factory=dict)
    labels: deque | None = None
    last_time: float | None = None


def new_state(specs: Specs) -> HistoryState:
    """An empty state sized for ``specs`` (each deque keeps the largest ``last`` it needs)."""
    sizes: dict[str, int] = {}
    label_size = 0
    for spec in specs:
        if spec.uses_label:
            label_size = max(label_size, spec.last)
        else:
            sizes[spec.of] = max(sizes.get(spec.of, 0), spec.last)
    return HistoryState(
        values={name: deque(maxlen=n) for name, n in sizes.items()},
        labels=deque(maxlen=label_size) if label_size else None,
    )


def _aggregate(agg: str, values: list[float]) -> float | None:
    if not values:
        return None
    if agg in ("mean", "label_mean"):
        return float(sum(values) / len(values))
    if agg == "min":
        return float(min(values))
    if agg == "max":
        return float(max(values))
    return float(values[-1])  # last, last_label


def history_values(state: HistoryState, specs: Specs) -> dict[str, float | None]:
    """Each history feature's value from the events already in ``state`` (None: no history)."""
    out: dict[str, float | None] = {}
    for spec in specs:
        source = state.labels if spec.uses_label else state.values.get(spec.of)
        recent = list(source or ())[-spec.last :]
        out[spec.name] = _aggregate(spec.agg, recent)
    return out


def update_with_event(state: HistoryState, features: Mapping[str, Any], event_time: float) -> None:
    """Adds one event's source feature values (call AFTER ``history_values`` for it)."""
    for name, values in state.values.items():
        value = features.get(name)
        if value is not None:
            values.append(float(value))
    state.last_time = event_time if state.last_time is None else max(state.last_time, event_time)


def update_with_label(state: HistoryState, label: Any) -> None:
    """Adds one event's (inline) label (call AFTER ``history_values`` for its event)."""
    if state.labels is not None and label is not None:
        state.labels.append(float(label))


def expired(state: HistoryState, event_time: float, ttl_seconds: float) -> bool:
    """Whether the key was idle for more than ``ttl_seconds`` before ``event_time``."""
    return state.last_time is not None and event_time - state.last_time > ttl_seconds


def step(
    state: HistoryState,
    specs: Specs,
    features: Mapping[str, Any],
    label: Any,
    event_time: float,
) -> dict[str, float | None]:
    """One event: its history values (previous events only), then the state update."""
    values = history_values(state, specs)
    update_with_event(state, features, event_time)
    update_with_label(state, label)
    return values


def history_in_order(
    config: DatasetConfig,
    records: Iterable[Mapping[str, Any]],
    ttl_seconds: float = DEFAULT_TTL_SECONDS,
) -> list[dict[str, float | None]]:
    """History values of validated feature records given in event-time order (the backtest).

    Each record is a ``transforms.validation`` record (``key``, ``event_time``,
    ``features``, ``label``); a key idle for more than ``ttl_seconds`` starts
    over, as the streaming step's expiry timer does.
    """
    specs = config.history_features
    states: dict[str, HistoryState] = {}
    out = []
    for record in records:
        state = states.get(record["key"])
        if state is None or expired(state, record["event_time"], ttl_seconds):
            state = states[record["key"]] = new_state(specs)
        out.append(step(state, specs, record["features"], record["label"], record["event_time"]))
    return out


def attach_history(
    config: DatasetConfig,
    records: Sequence[dict[str, Any]],
    ttl_seconds: float = DEFAULT_TTL_SECONDS,
) -> list[dict[str, Any]]:
    """``records`` (same order) with ``history`` on each feature record, computed in
    event-time order (ties: the given order). Without history features: unchanged.

    For rows built outside the stream (bootstrap history, a file's first rows).
    """
    if not config.history_features:
        return list(records)
    order = [i for i in range(len(records)) if records[i].get("kind", "features") == "features"]
    order.sort(key=lambda i: records[i]["event_time"])
    values = history_in_order(config, [records[i] for i in order], ttl_seconds)
    out = list(records)
    for i, h in zip(order, values, strict=True):
        out[i] = {**records[i], "history": h}
    return out


def history_scaled(spec: HistoryFeatureSpec, config: DatasetConfig) -> bool:
    """Whether the encoding puts the value in [0, 1]: a numeric source with min and max,
    a bool feature, a classification label, a regression label with min and max."""
    lo, hi = history_range(spec, config)
    if lo is not None and hi is not None and hi > lo:
        return True
    if spec.uses_label:
        return config.label.task == "binary_classification"
    return config.feature(spec.of).type == "bool"


def history_default(spec: HistoryFeatureSpec, config: DatasetConfig) -> float:
    """The encoded value of a missing history value: the middle of its encoded range,
    0.5 when ``history_scaled``, else 0.0."""
    return 0.5 if history_scaled(spec, config) else 0.0


def history_range(
    spec: HistoryFeatureSpec, config: DatasetConfig
) -> tuple[float | None, float | None]:
    """The (min, max) a history value is scaled with: its source feature's, or the label's."""
    if spec.uses_label:
        return config.label.min, config.label.max
    source = config.feature(spec.of)
    return source.min, source.max


def encode_history_value(spec: HistoryFeatureSpec, value: Any, config: DatasetConfig) -> float:
    """A history value as its model input: scaled like its source, the default when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return history_default(spec, config)
    x = float(value)
    lo, hi = history_range(spec, config)
    if lo is not None and hi is not None and hi > lo:
        x = (min(max(x, lo), hi) - lo) / (hi - lo)
    return x
