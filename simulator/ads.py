"""Deterministic generator of ad impressions with delayed conversions.

Matches ``configs/ad_conversions.yaml``: an impression message carries
``impression_id``, ``ad_id`` (the key), ``ts_millis`` and the features; for a
fraction of impressions (about 15 %, higher for good slots, high bids, users
who click a lot and desktop devices) a later conversion message
``{impression_id, converted: 1, ts_millis}`` follows 5 to 400 seconds after it.
Impressions without a conversion become negatives downstream when the label
wait (``max_delay_seconds``) expires.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

logger = logging.getLogger(__name__)

DEVICES = ("mobile", "desktop", "tablet")
_DEVICE_WEIGHTS = (0.6, 0.3, 0.1)
_DEVICE_EFFECT = {"mobile": -0.1, "desktop": 0.35, "tablet": 0.0}
MIN_CONVERSION_DELAY_S = 5.0
MAX_CONVERSION_DELAY_S = 400.0
# 2024-01-01T00:00:00Z: the default start of generated data, so files are reproducible.
DEFAULT_START_MILLIS = 1_704_067_200_000


@dataclass(frozen=True)
class Impression:
    """One impression and, if it converts, its conversion message."""

    impression: dict
    conversion: dict | None


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


class AdSimulator:
    """Seeded generator of impressions and their (later) conversions.

    Args:
        n_ads: number of ads (ids ``ad_001`` ...).
        seed: the seed; same seed and arguments give identical output.
    """

    def __init__(self, n_ads: int = 30, seed: int = 11):
        if n_ads <= 0 or n_ads > 999:
            raise ValueError(f"n_ads must be in 1..999, got {n_ads}")
        self.n_ads = n_ads
        self.seed = seed
        rng = random.Random(seed)
        self.ad_ids = tuple(f"ad_{i + 1:03d}" for i in range(n_ads))
        # Per-ad appeal (logit offset) and typical bid.
        self._appeal = tuple(rng.gauss(-2.3, 0.45) for _ in range(n_ads))
        self._bid_mu = tuple(rng.uniform(0.0, 1.2) for _ in range(n_ads))
        self._popularity = tuple(rng.uniform(0.5, 2.0) for _ in range(n_ads))

    def conversion_probability(self, ad_index: int, impression: dict) -> float:
        """The probability that ``impression`` (of ad ``ad_index``) converts."""
        logit = (
            self._appeal[ad_index]
            + 0.35 * math.log(impression["bid_price"] + 0.1)
            - 0.18 * (impression["slot_position"] - 1)
            + 0.3 * math.log1p(impression["user_recent_clicks"])
            + _DEVICE_EFFECT[impression["device"]]
        )
        return _sigmoid(logit)

    def impression(self, k: int, ts_millis: int) -> Impression:
        """Impression number ``k`` at ``ts_millis`` (a pure function of seed and k)."""
        rng = random.Random((self.seed << 64) + k)
        ad_index = rng.choices(range(self.n_ads), weights=self._popularity)[0]
        bid = min(max(rng.lognormvariate(self._bid_mu[ad_index], 0.6), 0.01), 50.0)
        slot = min(1 + int(rng.expovariate(0.45)), 10)
        device = rng.choices(DEVICES, weights=_DEVICE_WEIGHTS)[0]
        clicks = min(int(rng.expovariate(1.0 / 6.0) ** 1.2), 1000)
        impression = {
            "impression_id": f"imp-{rng.getrandbits(64):016x}",
            "ad_id": self.ad_ids[ad_index],
            "ts_millis": int(ts_millis),
            "bid_price": round(bid, 2),
            "slot_position": slot,
            "device": device,
            "user_recent_clicks": clicks,
        }
        conversion = None
        if rng.random() < self.conversion_probability(ad_index, impression):
            delay = MIN_CONVERSION_DELAY_S + rng.expovariate(1.0 / 60.0)
            delay = min(delay, MAX_CONVERSION_DELAY_S)
            conversion = {
                "impression_id": impression["impression_id"],
                "converted": 1,
                "ts_millis": int(ts_millis) + int(round(delay * 1000.0)),
            }
        return Impression(impression, conversion)

    def impressions(
        self, n_impressions: int, start_millis: int = DEFAULT_START_MILLIS, rate: float = 1.0
    ) -> Iterator[Impression]:
        """Yields ``n_impressions`` impressions, ``rate`` per second from ``start_millis``."""
        if n_impressions < 0:
            raise ValueError(f"n_impressions must be >= 0, got {n_impressions}")
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        for k in range(n_impressions):
            yield self.impression(k, start_millis + int(round(k * 1000.0 / rate)))

    def messages(
        self, n_impressions: int, start_millis: int = DEFAULT_START_MILLIS, rate: float = 1.0
    ) -> list[dict]:
        """Impression and conversion messages together, sorted by ``ts_millis``.

        Ties keep generation order, so an impression always precedes its
        conversion (which is at least 5 s later anyway).
        """
        out: list[dict] = []
        for imp in self.impressions(n_impressions, start_millis, rate):
            out.append(imp.impression)
            if imp.conversion is not None:
                out.append(imp.conversion)
        out.sort(key=lambda m: m["ts_millis"])
        return out
