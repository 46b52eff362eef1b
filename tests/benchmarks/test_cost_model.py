"""benchmarks.cost_model: CPU µs per event -> vCPU-seconds and Dataflow workers."""

from __future__ import annotations

import math

import pytest

from benchmarks import cost_model


def test_workers_needed_divides_busy_vcpus_by_usable_vcpus_per_worker():
    # 100 µs × 10k/s = 1 busy vCPU; 2 vCPUs at 50% = 1 usable vCPU per worker.
    assert cost_model.workers_needed(100, 10_000, 2, utilisation=0.5) == 1
    # 2.5 busy vCPUs need 3 such workers (rounded up, never down).
    assert cost_model.workers_needed(250, 10_000, 2, utilisation=0.5) == 3
    # 620 µs at 100k/s = 62 busy vCPUs; n1-standard-4 at 65% = 2.6 each -> 24.
    assert cost_model.workers_needed(620, 100_000, 4, utilisation=0.65) == math.ceil(62 / 2.6)


def test_workers_needed_keeps_one_worker_for_a_trickle():
    assert cost_model.workers_needed(1, 1, 4) == 1
    assert cost_model.workers_needed(0, 1_000, 4) == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"us_per_element": -1, "events_per_s": 1, "vcpus_per_worker": 2},
        {"us_per_element": 1, "events_per_s": -1, "vcpus_per_worker": 2},
        {"us_per_element": 1, "events_per_s": 1, "vcpus_per_worker": 0},
        {"us_per_element": 1, "events_per_s": 1, "vcpus_per_worker": 2, "utilisation": 0},
        {"us_per_element": 1, "events_per_s": 1, "vcpus_per_worker": 2, "utilisation": 1.5},
    ],
)
def test_workers_needed_rejects_impossible_inputs(kwargs):
    with pytest.raises(ValueError):
        cost_model.workers_needed(**kwargs)


def test_vcpu_seconds_per_million_events_equals_the_microseconds_per_event():
    assert cost_model.vcpu_seconds_per_million(150) == 150
    with pytest.raises(ValueError):
        cost_model.vcpu_seconds_per_million(-1)


def test_cost_table_has_one_row_per_rate_and_a_column_per_machine():
    rows = cost_model.cost_table(200, rates=(1_000, 10_000), utilisation=0.5)
    assert rows == [
        {
            "events_per_s": 1_000,
            "busy_vcpus": 0.2,
            "workers_n1-standard-2": 1,
            "workers_n1-standard-4": 1,
        },
        {
            "events_per_s": 10_000,
            "busy_vcpus": 2.0,
            "workers_n1-standard-2": 2,
            "workers_n1-standard-4": 1,
        },
    ]
