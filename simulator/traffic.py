"""Deterministic simulator of city traffic sensors (the ``configs/traffic.yaml`` stream).

Every reading is a pure function of ``(seed, event index, event time)``:

* Events lie on a global time grid ``t_k = k / rate`` (epoch seconds), so
  ``readings(a, b, rate)`` followed by ``readings(b, c, rate)`` yields exactly
  ``readings(a, c, rate)``; a live publisher can ask for "everything due up to
  now" in small steps and get the same stream as one big call.
* Event ``k`` comes from sensor ``order[k % n_sensors]`` (a seeded permutation),
  so every sensor reports once per ``n_sensors / rate`` seconds.
* The simulated day is compressed: ``day_seconds`` real seconds are one day and
  ``hour_of_day`` is derived from the absolute event time, so history and live
  data agree on the hour of any instant.

The model of one reading:

* demand follows a daily rhythm (low at night, rush hours around 08:00 and
  17:30, a daytime plateau), scaled per sensor and road type;
* incidents (a seeded per-sensor, per-half-hour draw) add occupancy and cut
  speed, which usually means congestion;
* ``occupancy`` comes from demand, ``mean_speed_kmh`` falls with occupancy
  from the sensor's free-flow speed, ``vehicle_count`` follows the
  fundamental diagram (flow peaks at moderate occupancy);
* the label ``congested`` says whether a congestion index (occupancy and the
  relative speed drop) exceeds a threshold.

Concept drift ("road works", from ``start_time + drift_after_seconds``): lanes
are closed, so congestion is declared at a much lower index. The features keep
their distribution; only their relationship with the label changes, so a model
fit before the drift misclassifies the whole band between the two thresholds
until it is refit on post-drift data.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

from dataset.times import format_event_time

logger = logging.getLogger(__name__)

ROAD_TYPES = ("highway", "arterial", "local")
_ROAD_WEIGHTS = (0.15, 0.45, 0.40)
# Free-flow speed (km/h), flow capacity (vehicles per minute) and demand scale.
_FREE_FLOW = {"highway": 105.0, "arterial": 55.0, "local": 38.0}
_CAPACITY = {"highway": 240.0, "arterial": 110.0, "local": 45.0}
_DEMAND_SCALE = {"highway": 1.0, "arterial": 0.9, "local": 0.75}

# Congestion index thresholds before and during the road works.
THRESHOLD_BEFORE_DRIFT = 0.40
THRESHOLD_AFTER_DRIFT = 0.17
_LABEL_NOISE = 0.025
_INCIDENT_SLOTS_PER_DAY = 48  # one incident draw per sensor per simulated half hour

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _hash_uniform(*parts: int) -> float:
    """A uniform number in [0, 1) that is a pure function of ``parts``."""
    h = 0x2545F4914F6CDD1D
    for p in parts:
        h = _splitmix64(h ^ (p & _MASK64))
    return (h >> 11) / float(1 << 53)


def format_iso_millis(t: float) -> str:
    """Formats epoch seconds as ISO-8601 UTC with milliseconds and 'Z'."""
    return format_event_time(t, "iso8601")


def daily_demand(hour: float) -> float:
    """Relative traffic demand (about 0.08 at night, 1.0 at the morning peak)."""
    morning = math.exp(-((hour - 8.0) ** 2) / (2 * 1.0**2))
    evening = math.exp(-((hour - 17.5) ** 2) / (2 * 1.3**2))
    # Daytime plateau: a smooth step up around 06:30 and down around 20:30.
    day = 1.0 / (1.0 + math.exp(-(hour - 6.5) * 2.0)) - 1.0 / (1.0 + math.exp(-(hour - 20.5) * 2.0))
    return 0.08 + 0.62 * morning + 0.52 * evening + 0.30 * day


@dataclass(frozen=True)
class Sensor:
    """Static properties of one sensor."""

    index: int
    sensor_id: str
    road_type: str
    free_flow_kmh: float
    capacity: float
    demand_scale: float


class TrafficSimulator:
    """Seeded, deterministic generator of traffic sensor readings.

    Args:
        n_sensors: number of sensors (ids ``S0001`` ...).
        seed: the seed; same seed and arguments give identical output.
        day_seconds: real seconds per simulated day.
        drift_after_seconds: seconds after ``start_time`` when the road works
            start (the concept drift); None means never.
        start_time: epoch seconds the drift is measured from (a live run passes
            the time it starts).
        incident_rate: probability that a sensor has an incident in a given
            simulated half hour.
        day_origin: epoch seconds at which a simulated day starts (00:00); the
            hour of ``t`` is ``(t - day_origin) % day_seconds`` scaled to 24 h.
            Publisher and history generator must share it.
    """

    def __init__(
        self,
        n_sensors: int = 300,
        seed: int = 7,
        day_seconds: float = 600.0,
        drift_after_seconds: float | None = None,
        start_time: float = 0.0,
        incident_rate: float = 0.03,
        day_origin: float = 0.0,
    ):
        if n_sensors <= 0 or n_sensors > 9999:
            raise ValueError(f"n_sensors must be in 1..9999, got {n_sensors}")
        if day_seconds <= 0:
            raise ValueError(f"day_seconds must be positive, got {day_seconds}")
        if drift_after_seconds is not None and drift_after_seconds < 0:
            raise ValueError(f"drift_after_seconds must be >= 0, got {drift_after_seconds}")
        if not 0.0 <= incident_rate <= 1.0:
            raise ValueError(f"incident_rate must be in [0, 1], got {incident_rate}")
        self.n_sensors = n_sensors
        self.seed = seed
        self.day_seconds = float(day_seconds)
        self.drift_after_seconds = drift_after_seconds
        self.start_time = float(start_time)
        self.incident_rate = incident_rate
        self.day_origin = float(day_origin)
        rng = random.Random(seed)
        sensors = []
        for i in range(n_sensors):
            road = rng.choices(ROAD_TYPES, weights=_ROAD_WEIGHTS)[0]
            sensors.append(
                Sensor(
                    index=i,
                    sensor_id=f"S{i + 1:04d}",
                    road_type=road,
                    free_flow_kmh=_FREE_FLOW[road] * rng.uniform(0.9, 1.1),
                    capacity=_CAPACITY[road] * rng.uniform(0.85, 1.15),
                    demand_scale=_DEMAND_SCALE[road] * rng.uniform(0.75, 1.25),
                )
            )
        self.sensors: tuple[Sensor, ...] = tuple(sensors)
        order = list(range(n_sensors))
        rng.shuffle(order)
        self._order = tuple(order)

    @property
    def drift_time(self) -> float | None:
        """Epoch seconds when the road works start, or None."""
        if self.drift_after_seconds is None:
            return None
        return self.start_time + self.drift_after_seconds

    def is_drifted(self, t: float) -> bool:
        """Whether the road works are on at event time ``t``."""
        drift = self.drift_time
        return drift is not None and t >= drift

    def hour_of_day(self, t: float) -> float:
        """Simulated hour of day in [0, 24) at epoch seconds ``t``."""
        hour = ((t - self.day_origin) % self.day_seconds) / self.day_seconds * 24.0
        return min(max(hour, 0.0), 23.999)

    def sensor_for(self, k: int) -> Sensor:
        """The sensor that produces event ``k``."""
        return self.sensors[self._order[k % self.n_sensors]]

    def incident(self, sensor: Sensor, t: float) -> float:
        """Incident severity in (0, 1] for ``sensor`` at ``t``, or 0.0 if none."""
        slot = math.floor((t - self.day_origin) / self.day_seconds * _INCIDENT_SLOTS_PER_DAY)
        if _hash_uniform(self.seed, 0x1C1D, sensor.index, slot) >= self.incident_rate:
            return 0.0
        return 0.4 + 0.6 * _hash_uniform(self.seed, 0x5E7, sensor.index, slot)

    def reading(self, k: int, t: float) -> dict:
        """Reading for event ``k`` with event time ``t`` (a pure function)."""
        sensor = self.sensor_for(k)
        rng = random.Random((self.seed << 64) + (k & _MASK64))
        hour = self.hour_of_day(t)
        severity = self.incident(sensor, t)

        demand = daily_demand(hour) * sensor.demand_scale
        occupancy = demand * 0.7 + rng.gauss(0.0, 0.035) + 0.35 * severity
        occupancy = min(max(occupancy, 0.0), 1.0)

        speed_ratio = 1.0 - 0.95 * occupancy**1.4 + rng.gauss(0.0, 0.04)
        speed_ratio *= 1.0 - 0.5 * severity
        speed_ratio = min(max(speed_ratio, 0.02), 1.15)
        speed = min(max(sensor.free_flow_kmh * speed_ratio, 0.0), 200.0)

        # Fundamental diagram: flow grows with occupancy up to the critical
        # occupancy, then falls as the road jams.
        x = occupancy / 0.3
        flow = x if x <= 1.0 else math.exp(-0.7 * (x - 1.0))
        mean_count = sensor.capacity * flow
        count = round(mean_count + rng.gauss(0.0, 1.0) * math.sqrt(mean_count + 1.0))
        count = min(max(count, 0), 400)

        index = 0.55 * occupancy + 0.45 * (1.0 - min(speed_ratio, 1.0))
        threshold = THRESHOLD_AFTER_DRIFT if self.is_drifted(t) else THRESHOLD_BEFORE_DRIFT
        congested = int(index + rng.gauss(0.0, _LABEL_NOISE) > threshold)

        return {
            "sensor_id": sensor.sensor_id,
            "event_time": format_iso_millis(t),
            "vehicle_count": int(count),
            "mean_speed_kmh": round(speed, 2),
            "occupancy": round(occupancy, 4),
            "hour_of_day": round(hour, 3),  # hour_of_day() caps it at 23.999
            "road_type": sensor.road_type,
            "congested": congested,
        }

    @staticmethod
    def grid(t_start: float, t_end: float, rate: float) -> Iterator[tuple[int, float]]:
        """Yields ``(k, t)`` for the grid points ``t = k / rate`` in ``[t_start, t_end)``."""
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        k = math.ceil(t_start * rate)
        while True:
            t = k / rate
            if t >= t_end:
                return
            if t >= t_start:
                yield k, t
            k += 1

    def events(self, t_start: float, t_end: float, rate: float) -> Iterator[tuple[float, dict]]:
        """Yields ``(event_time, reading)`` for grid events with ``t_start <= t < t_end``.

        Args:
            t_start: epoch seconds, inclusive.
            t_end: epoch seconds, exclusive.
            rate: events per second (all sensors together).
        """
        for k, t in self.grid(t_start, t_end, rate):
            yield t, self.reading(k, t)

    def readings(self, t_start: float, t_end: float, rate: float) -> Iterator[dict]:
        """Yields the readings with event times in ``[t_start, t_end)`` at ``rate``/s."""
        for _, reading in self.events(t_start, t_end, rate):
            yield reading

    def history_events(
        self, n_events: int, end_time: float, rate: float
    ) -> list[tuple[float, dict]]:
        """The ``n_events`` grid events just before ``end_time``, oldest first."""
        if n_events < 0:
            raise ValueError(f"n_events must be >= 0, got {n_events}")
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        k_end = math.ceil(end_time * rate)  # first grid index at or after end_time
        return [(k / rate, self.reading(k, k / rate)) for k in range(k_end - n_events, k_end)]

    def history(self, n_events: int, end_time: float, rate: float = 10.0) -> list[dict]:
        """Past readings (oldest first), e.g. to bootstrap a model from history."""
        return [r for _, r in self.history_events(n_events, end_time, rate)]
