import copy

import apache_beam as beam
import yaml
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from dataset.config import config_from_dict
from tests.helpers import T0, traffic_payload
from tests.transforms.state_doubles import Cell, Timer
from transforms.history import AttachHistory, _HistoryFn
from transforms.validation import validate_payload

with open("configs/traffic.yaml", encoding="utf-8") as f:
    RAW = yaml.safe_load(f)
RAW = copy.deepcopy(RAW)
RAW["history_features"] = {
    "occ_mean_2": {"of": "occupancy", "agg": "mean", "last": 2},
    "last_congested": {"agg": "last_label"},
}
CONFIG = config_from_dict(RAW, source="test")
TTL = 600


def _record(sensor, t, occupancy, congested, i):
    payload = traffic_payload(sensor, t, occupancy=occupancy, congested=congested)
    return validate_payload(payload, CONFIG, f"{sensor}-{i}")


def _options():
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    return options


def _summary(record):
    return (record["key"], record["event_time"], tuple(sorted(record["history"].items())))


def test_history_per_key_in_order_and_idle_keys_are_cleared_by_the_timer():
    a = [_record("A", T0 + i * 60, 0.1 * (i + 1), i % 2, i) for i in range(3)]
    b = [_record("B", T0 + 30, 0.9, 1, 9)]
    # Behind the watermark, within the TTL of A's last event: only the fired
    # expiry timer (not the TTL check in process) can have cleared A's state.
    late_a = _record("A", T0 + 700, 0.5, 0, 5)
    stream = (
        TestStream()
        .advance_watermark_to(T0)
        .add_elements([TimestampedValue(a[0], T0), TimestampedValue(b[0], T0 + 30)])
        .add_elements([TimestampedValue(a[1], T0 + 60)])
        .add_elements([TimestampedValue(a[2], T0 + 120)])
        .advance_watermark_to(T0 + 1500)  # A's and B's expiry timers fire
        .add_elements([TimestampedValue(late_a, T0 + 700)])
        .advance_watermark_to_infinity()
    )
    none = (("last_congested", None), ("occ_mean_2", None))
    expected = [
        ("A", T0, none),
        ("B", T0 + 30, none),
        ("A", T0 + 60, (("last_congested", 0.0), ("occ_mean_2", 0.1))),
        ("A", T0 + 120, (("last_congested", 1.0), ("occ_mean_2", 0.15000000000000002))),
        ("A", T0 + 700, none),
    ]
    with TestPipeline(options=_options()) as p:
        out = p | stream | AttachHistory(CONFIG, ttl_seconds=TTL) | beam.Map(_summary)
        assert_that(out, equal_to(expected))


def test_held_state_is_always_covered_by_a_timer_that_clears_it():
    fn = _HistoryFn(CONFIG, TTL)
    state, timer = Cell(), Timer()
    latest = T0
    for i, t in enumerate(
        [T0, T0 + 300, T0 + 100]
    ):  # timer: T0 + TTL, then T0 + 300 + TTL  # out of order: the timer never moves back
        out = list(fn.process(("A", _record("A", t, 0.5, 0, i)), state=state, expiry=timer))
        assert out[0]["history"].keys() == {"occ_mean_2", "last_congested"}
        latest = max(latest, t)
        assert state.read() is not None and float(timer.at) == latest + TTL
    fn.expire(state=state)
    assert state.read() is None


def test_label_records_pass_through_unchanged():
    label = {"kind": "label", "key": None, "event_time": T0, "label": 1, "features": {}}
    with TestPipeline(options=_options()) as p:
        out = p | beam.Create([label]) | AttachHistory(CONFIG)
        assert_that(out, equal_to([label]))


def test_bounded_input_gets_the_values_of_event_time_order_whatever_the_input_order():
    from model.history import history_in_order
    from transforms.history import AttachHistoryInOrder

    records = [
        _record(key, T0 + 60 * i + j, 0.1 * i + 0.01 * j, (i + j) % 2, 10 * j + i)
        for i in range(5)
        for j, key in enumerate("AB")
    ]
    records.append(_record("A", T0 + 60 * 4 + TTL + 1, 0.5, 0, 99))  # idle past the TTL
    expected = [
        _summary({**r, "history": h})
        for r, h in zip(records, history_in_order(CONFIG, records, TTL), strict=True)
    ]
    assert all(v is None for _, v in expected[-1][2])  # A's state expired
    assert sum(all(v is not None for _, v in e[2]) for e in expected) == len(records) - 3
    shuffled = records[1::2] + records[::-2]
    with TestPipeline() as p:
        out = (
            p
            | beam.Create(shuffled)
            | AttachHistoryInOrder(CONFIG, ttl_seconds=TTL)
            | beam.Map(_summary)
        )
        assert_that(out, equal_to(expected))
