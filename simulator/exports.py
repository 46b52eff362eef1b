"""Exports: simulated traffic history and sample ad impressions written to JSONL/CSV files."""

from __future__ import annotations

import logging
import math
from typing import Any

from dataset.config import DatasetConfig
from dataset.times import format_event_time
from simulator.ads import DEFAULT_START_MILLIS, AdSimulator
from simulator.messages import check_config_matches, with_event_time
from simulator.records import file_kind, write_records
from simulator.traffic import TrafficSimulator

logger = logging.getLogger(__name__)


def simulated_history(
    config: DatasetConfig,
    n_events: int,
    end_time: float,
    *,
    rate: float = 10.0,
    n_sensors: int = 300,
    seed: int = 7,
    day_seconds: float = 600.0,
    day_origin: float = 0.0,
    drift_after: float | None = None,
) -> list[tuple[float, dict]]:
    """``n_events`` simulated past readings ending before ``end_time``, oldest first.

    Returns ``(event_time, record)`` pairs; each record's event-time field is in
    the config's format. ``drift_after`` counts from the first event (0: all of
    the history is post-drift).

    Raises:
        ValueError: bad arguments, or a config that does not describe the readings.
    """
    if n_events <= 0:
        raise ValueError(f"--events must be positive, got {n_events}")
    if rate <= 0:
        raise ValueError(f"--rate must be positive, got {rate}")
    first = math.ceil(end_time * rate) - n_events
    sim = TrafficSimulator(
        n_sensors=n_sensors,
        seed=seed,
        day_seconds=day_seconds,
        drift_after_seconds=drift_after,
        start_time=first / rate,
        day_origin=day_origin,
    )
    events = sim.history_events(n_events, end_time, rate)
    check_config_matches(config, events[0][1], "the traffic simulator's readings")
    return [(t, with_event_time(r, config, t)) for t, r in events]


def export_history(
    config: DatasetConfig, out: str, n_events: int, end_time: float, **sim: Any
) -> int:
    """Writes ``simulated_history(config, n_events, end_time, **sim)`` to ``out``.

    Returns the number of readings written.
    """
    file_kind(out)
    events = simulated_history(config, n_events, end_time, **sim)
    columns = [config.key_field, config.event_time_field, *config.feature_names, config.label.field]
    n = write_records(out, [r for _, r in events], columns)
    logger.info(
        "wrote %d readings (%s .. %s) to %s",
        n,
        format_event_time(events[0][0], "iso8601"),
        format_event_time(events[-1][0], "iso8601"),
        out,
    )
    return n


def export_ads(
    out: str,
    n_impressions: int = 300,
    *,
    seed: int = 11,
    n_ads: int = 30,
    start_millis: int = DEFAULT_START_MILLIS,
    rate: float = 1.0,
) -> int:
    """Writes impressions and their conversions, sorted by ``ts_millis``; returns the count."""
    if n_impressions <= 0:
        raise ValueError(f"--impressions must be positive, got {n_impressions}")
    messages = AdSimulator(n_ads=n_ads, seed=seed).messages(n_impressions, start_millis, rate)
    if file_kind(out) == "csv":
        columns = [
            "impression_id",
            "ad_id",
            "ts_millis",
            "bid_price",
            "slot_position",
            "device",
            "user_recent_clicks",
            "converted",
        ]
        n = write_records(out, messages, columns)
    else:
        n = write_records(out, messages)
    logger.info("wrote %d ad messages (%d impressions) to %s", n, n_impressions, out)
    return n
