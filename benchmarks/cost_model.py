"""The Dataflow cost model: CPU µs per event -> vCPU-seconds and workers.

Pure functions (``benchmarks.batch_cost`` applies them to its measured cost;
README "Running on Google Cloud -> 9. Costs to expect" shows the table).
"""

from __future__ import annotations

import math
from typing import Any


def vcpu_seconds_per_million(us_per_element: float) -> float:
    """vCPU-seconds to process one million events at ``us_per_element`` CPU µs each."""
    if us_per_element < 0:
        raise ValueError(f"us_per_element must be >= 0, got {us_per_element}")
    return us_per_element  # 1e6 events × µs × 1e-6 s/µs


def workers_needed(
    us_per_element: float,
    events_per_s: float,
    vcpus_per_worker: int,
    utilisation: float = 0.65,
    min_workers: int = 1,
) -> int:
    """Workers whose vCPUs, busy at ``utilisation``, keep up with ``events_per_s``.

    Args:
        us_per_element: CPU µs one event costs (all of the graph's work for it).
        events_per_s: sustained input rate.
        vcpus_per_worker: e.g. 2 for n1-standard-2, 4 for n1-standard-4.
        utilisation: the fraction of each vCPU the job may use on average
            (headroom for spikes, backlog catch-up, GC, the harness itself).
        min_workers: the floor (a streaming job runs at least one worker).

    Returns:
        ``ceil(us × rate / 1e6 / (vcpus × utilisation))``, at least ``min_workers``.
    """
    if us_per_element < 0 or events_per_s < 0:
        raise ValueError("us_per_element and events_per_s must be >= 0")
    if vcpus_per_worker < 1:
        raise ValueError(f"vcpus_per_worker must be >= 1, got {vcpus_per_worker}")
    if not 0 < utilisation <= 1:
        raise ValueError(f"utilisation must be in (0, 1], got {utilisation}")
    busy_vcpus = us_per_element * events_per_s / 1e6
    return max(min_workers, math.ceil(busy_vcpus / (vcpus_per_worker * utilisation) - 1e-9))


def cost_table(
    us_per_element: float,
    rates: tuple[float, ...] = (1_000, 10_000, 100_000),
    machines: tuple[tuple[str, int], ...] = (("n1-standard-2", 2), ("n1-standard-4", 4)),
    utilisation: float = 0.65,
) -> list[dict[str, Any]]:
    """One row per input rate: busy vCPUs and workers per machine type."""
    rows = []
    for rate in rates:
        row: dict[str, Any] = {
            "events_per_s": rate,
            "busy_vcpus": round(us_per_element * rate / 1e6, 2),
        }
        for name, vcpus in machines:
            row[f"workers_{name}"] = workers_needed(us_per_element, rate, vcpus, utilisation)
        rows.append(row)
    return rows
