"""Hybrid serving: precomputed predictions for the head of the key distribution.

The batch-prediction job (``python -m pipelines.main batch-predict``) writes
one row per instance into a BigQuery table with the prediction schema
(``dataset.tables.prediction_schema``: the config's key column,
``prediction``, ``predicted_label``, ``model_version``, ``predicted_at``...).
Run it over the instances of the frequent ("head") keys; the service then
answers requests for those keys from the table (``precomputed``) and scores
every other key live.

``PrecomputedPredictions`` holds the newest row per key and is refreshed from
the table every ``refresh_seconds`` on the service's background thread; a
failed refresh keeps the last good set and is counted.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from dataset.config import DatasetConfig
from dataset.times import rfc3339
from serving.predictor import Precomputed

_LOG = logging.getLogger(__name__)
DEFAULT_MAX_KEYS = 1_000_000

Loader = Callable[[], dict[str, Precomputed]]


def _sort_time(value: Any) -> float:
    if value is None:
        return float("-inf")
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp()
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def latest_per_key(rows: Iterable[Mapping[str, Any]], key_field: str) -> dict[str, Precomputed]:
    """The newest (by ``predicted_at``) prediction of each key in ``rows``.

    Rows without a key or a prediction are skipped.
    """
    best: dict[str, tuple[float, Precomputed]] = {}
    for row in rows:
        key, value = row.get(key_field), row.get("prediction")
        if key is None or value is None:
            continue
        at = row.get("predicted_at")
        stamp = _sort_time(at)
        key = str(key)
        if key in best and best[key][0] >= stamp:
            continue
        label = row.get("predicted_label")
        best[key] = (
            stamp,
            Precomputed(
                prediction=float(value),
                predicted_label=None if label is None else int(label),
                model_version=str(row.get("model_version") or ""),
                predicted_at=None if at is None else rfc3339(at),
            ),
        )
    return {key: item for key, (_, item) in best.items()}


def parse_table(
    table: str, flag: str = "--hybrid-table", what: str = "the batch-prediction output table"
) -> tuple[str, str, str]:
    """``PROJECT.DATASET.TABLE`` (or ``PROJECT:DATASET.TABLE``) -> its three parts.

    ``flag`` and ``what`` name the option in the error message.

    Raises:
        ValueError: for any other form.
    """
    parts = table.replace(":", ".", 1).split(".")
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"{flag} {table!r}: expected PROJECT.DATASET.TABLE ({what})")
    return parts[0], parts[1], parts[2]


def bigquery_loader(
    client: Any, table: str, config: DatasetConfig, max_rows: int = DEFAULT_MAX_KEYS
) -> Loader:
    """Reads the newest prediction per key from a batch-prediction table.

    Args:
        client: a ``google.cloud.bigquery.Client`` (``dataset.resources.bigquery_client``).
        table: ``PROJECT.DATASET.TABLE``.
        config: the dataset config (its key column).
        max_rows: read at most this many rows (newest first).
    """
    project, dataset, name = parse_table(table)
    key = config.key_field
    sql = (
        f"SELECT `{key}`, prediction, predicted_label, model_version, predicted_at "
        f"FROM `{project}.{dataset}.{name}` ORDER BY predicted_at DESC LIMIT {int(max_rows)}"
    )

    def load() -> dict[str, Precomputed]:
        rows = client.query(sql).result()
        return latest_per_key((dict(row.items()) for row in rows), key)

    return load


class PrecomputedPredictions:
    """The current set of precomputed predictions, swapped whole on refresh.

    Args:
        load: returns the full key -> ``Precomputed`` mapping.
    """

    def __init__(self, load: Loader):
        self._load = load
        self._lock = threading.Lock()
        self._by_key: dict[str, Precomputed] = {}
        self.refreshed_at: float | None = None
        self.errors = 0

    def __len__(self) -> int:
        return len(self._by_key)

    def lookup(self, key: str) -> Precomputed | None:
        """The precomputed prediction for ``key``, or None (serve it live)."""
        return self._by_key.get(key)

    def refresh(self, now: float) -> bool:
        """Reloads the set; on failure keeps the last good one. Returns success."""
        try:
            loaded = self._load()
        except Exception as e:  # noqa: BLE001 - keep the last good set; retried next time
            self.errors += 1
            _LOG.warning("Could not refresh precomputed predictions (keeping %d): %s", len(self), e)
            return False
        with self._lock:
            self._by_key = loaded
            self.refreshed_at = now
        _LOG.info("Loaded %d precomputed predictions", len(loaded))
        return True
