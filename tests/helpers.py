"""Shared builders for tests: config files and Pub/Sub messages."""

from __future__ import annotations

import json
from typing import Any

from apache_beam.io.gcp.pubsub import PubsubMessage

from dataset.config import load_config
from transforms.validation import utc_iso

TRAFFIC = load_config("configs/traffic.yaml")
ADS = load_config("configs/ad_conversions.yaml")
T0 = 1_700_000_040.0  # 2023-11-14T22:14:00Z, on a minute boundary


def traffic_payload(sensor: str = "S0001", t: float = T0, **overrides: Any) -> dict[str, Any]:
    payload = {
        "sensor_id": sensor,
        "event_time": utc_iso(t),
        "vehicle_count": 12,
        "mean_speed_kmh": 48.5,
        "occupancy": 0.25,
        "hour_of_day": 8.5,
        "road_type": "arterial",
        "congested": 0,
    }
    payload.update(overrides)
    return {k: v for k, v in payload.items() if v is not DROP}


class _Drop:
    def __repr__(self) -> str:
        return "DROP"


DROP = _Drop()


def message(
    payload: Any, message_id: str, t: float, attribute: str = "event_time"
) -> PubsubMessage:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return PubsubMessage(data, {attribute: utc_iso(t), "message_id": message_id})
