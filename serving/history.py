"""Per-key history for the online service: ``history_features`` from the training table.

The streaming pipeline computes a record's history values from the key's
previous events (``transforms.history``, with ``model.history``). The service
sees one request at a time, so it keeps the recent events of each key in a
``KeyHistory`` store, rebuilt from the newest rows of the training-examples
table (the table the trainer reads: each row carries the raw features, the
label and the event time) and refreshed every ``--history-refresh-seconds`` on
the service's background thread, like ``serving.hybrid.PrecomputedPredictions``
(a failed refresh keeps the last good set and is counted).

A request's history values are ``model.history.history_in_order`` over the
key's stored events OLDER than the request's event time, followed by the
request itself: the same function, the same order (event time), the same
idle expiry (``ttl_seconds``) as the streaming step, so the same events give
the same values. The request's own features and label never enter them.

Bounds: at most ``max_rows`` rows are read (newest first), at most
``max_keys`` keys are kept (the most recently active), and each key keeps
only as many events as the longest ``last`` needs. So a request older than
some of its key's stored events may need events the store dropped: then it
has no history ("missing"), never a value computed from fewer events.

Known differences from the stream (documented in README): the store is as
fresh as its last refresh (events that reached the stream since then are not
in it yet), and only labelled events become training rows (with inline labels
every event carries its label, so nothing is lost then).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from dataset.config import DatasetConfig
from dataset.times import to_datetime
from model.history import DEFAULT_TTL_SECONDS, history_in_order

_LOG = logging.getLogger(__name__)
DEFAULT_MAX_KEYS = 100_000
DEFAULT_MAX_ROWS = 1_000_000

# One stored event: (event time seconds, example id, source feature values, label).
Event = tuple[float, str, dict[str, Any], Any]


@dataclasses.dataclass(frozen=True)
class KeyEvents:
    """A key's newest events (event-time order); ``trimmed``: older ones were dropped."""

    events: tuple[Event, ...]
    trimmed: bool = False


Loader = Callable[[], Iterable[Mapping[str, Any]]]


def source_columns(config: DatasetConfig) -> list[str]:
    """The training-table columns history needs: source features, and the label if used."""
    columns: list[str] = []
    for spec in config.history_features:
        name = config.label.field if spec.uses_label else spec.of
        if name not in columns:
            columns.append(name)
    return columns


def depth(config: DatasetConfig) -> int:
    """Events kept per key: the longest ``last`` of the config's history features."""
    return max((spec.last for spec in config.history_features), default=0)


def events_per_key(
    rows: Iterable[Mapping[str, Any]], config: DatasetConfig, max_keys: int
) -> tuple[dict[str, KeyEvents], int]:
    """Training rows -> each key's newest events in event-time order, and the keys dropped.

    Rows repeated under one ``example_id`` count once; rows without a key or
    an event time are skipped. Each key keeps ``depth(config)`` events; past
    ``max_keys`` keys, the least recently active are dropped.
    """
    label_field = config.label.field
    features = [c for c in source_columns(config) if c != label_field]
    seen: set[str] = set()
    by_key: dict[str, list[Event]] = {}
    for row in rows:
        key, when = row.get(config.key_field), row.get("event_time")
        if key is None or when is None:
            continue
        example_id = str(row.get("example_id") or "")
        if example_id:
            if example_id in seen:
                continue
            seen.add(example_id)
        event = (
            to_datetime(when).timestamp(),
            example_id,
            {name: row.get(name) for name in features},
            row.get(label_field),
        )
        by_key.setdefault(str(key), []).append(event)
    keep = depth(config)
    out = {
        key: KeyEvents(tuple(sorted(events, key=_order)[-keep:]), len(events) > keep)
        for key, events in by_key.items()
    }
    dropped = max(len(out) - max_keys, 0)
    if dropped:
        newest = sorted(out, key=lambda k: out[k].events[-1][0], reverse=True)[:max_keys]
        out = {key: out[key] for key in newest}
    return out, dropped


def _order(event: Event) -> tuple[float, str]:
    return event[0], event[1]


def history_for(
    config: DatasetConfig,
    stored: KeyEvents,
    key: str,
    event_time: float,
    ttl_seconds: float = DEFAULT_TTL_SECONDS,
) -> dict[str, float | None] | None:
    """The history values of an event of ``key`` at ``event_time`` given the key's
    ``stored`` events: ``model.history.history_in_order`` over the events older
    than it, then the event itself. None when the store dropped events it needs."""
    records = [
        {"key": key, "event_time": t, "features": values, "label": label}
        for t, _, values, label in stored.events
        if t < event_time
    ]
    if stored.trimmed and len(records) < depth(config):
        return None
    records.append({"key": key, "event_time": event_time, "features": {}, "label": None})
    return history_in_order(config, records, ttl_seconds)[-1]


def bigquery_loader(
    client: Any, table: str, config: DatasetConfig, max_rows: int = DEFAULT_MAX_ROWS
) -> Loader:
    """Reads the newest training rows (the columns history needs) from ``table``.

    Args:
        client: a ``google.cloud.bigquery.Client`` (``dataset.resources.bigquery_client``).
        table: the training-examples table, ``PROJECT.DATASET.TABLE``.
        config: the dataset config.
        max_rows: read at most this many rows (newest event time first).
    """
    from serving.hybrid import parse_table

    project, dataset, name = parse_table(table, "--history-table", "the training-examples table")
    columns = [config.key_field, "event_time", "example_id", *source_columns(config)]
    select = ", ".join(f"`{c}`" for c in dict.fromkeys(columns))
    sql = (
        f"SELECT {select} FROM `{project}.{dataset}.{name}` "
        f"ORDER BY event_time DESC LIMIT {int(max_rows)}"
    )

    def load() -> list[dict[str, Any]]:
        return [dict(row.items()) for row in client.query(sql).result()]

    return load


class KeyHistory:
    """Each key's recent events, swapped whole on refresh.

    Args:
        config: the dataset config (its ``history_features``).
        load: returns the training rows to build from (``bigquery_loader``).
        max_keys: keys kept (the most recently active).
        ttl_seconds: a key idle this long before a request has no history
            (the streaming step's expiry).
    """

    def __init__(
        self,
        config: DatasetConfig,
        load: Loader,
        max_keys: int = DEFAULT_MAX_KEYS,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
    ):
        if not config.history_features:
            raise ValueError(f"config {config.name!r} has no history_features")
        if max_keys < 1:
            raise ValueError("--history-max-keys must be >= 1")
        self._config = config
        self._load = load
        self._max_keys = max_keys
        self._ttl = ttl_seconds
        self._lock = threading.Lock()
        self._by_key: dict[str, KeyEvents] = {}
        self.refreshed_at: float | None = None
        self.errors = 0
        self.dropped_keys = 0

    def __len__(self) -> int:
        return len(self._by_key)

    def lookup(self, key: str, event_time: float) -> dict[str, float | None] | None:
        """The history values of ``key``'s event at ``event_time``; None: no history
        (an unknown key, no stored event before it, one older than the TTL, or
        older events the store dropped)."""
        stored = self._by_key.get(key)
        if stored is None:
            return None
        values = history_for(self._config, stored, key, event_time, self._ttl)
        if values is None or all(v is None for v in values.values()):
            return None
        return values

    def refresh(self, now: float) -> bool:
        """Rebuilds the store; on failure keeps the last good one. Returns success."""
        try:
            by_key, dropped = events_per_key(self._load(), self._config, self._max_keys)
        except Exception as e:  # noqa: BLE001 - keep the last good set; retried next time
            self.errors += 1
            _LOG.warning("Could not refresh key history (keeping %d keys): %s", len(self), e)
            return False
        with self._lock:
            self._by_key = by_key
            self.dropped_keys = dropped
            self.refreshed_at = now
        if dropped:
            _LOG.warning("Key history holds %d keys; %d older ones dropped", len(by_key), dropped)
        _LOG.info("Loaded the recent history of %d keys", len(by_key))
        return True
