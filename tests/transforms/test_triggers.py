import dataclasses
import json

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from tests.helpers import T0, TRAFFIC
from transforms.triggers import (
    DecideRetraining,
    TriggerState,
    add_examples,
    decide,
    fire,
    quality_alarm,
    trigger_message,
)
from transforms.validation import utc_iso

POLICY = dataclasses.replace(
    TRAFFIC.retraining,
    min_new_examples=5,
    min_interval_seconds=60,
    max_interval_seconds=300,
    quality_floor=0.85,
    quality_min_examples=3,
)
CONFIG = dataclasses.replace(TRAFFIC, retraining=POLICY)


def test_threshold_debounce_and_schedule():
    state = TriggerState()
    add_examples(state, 4, T0, T0 + 4)
    assert decide(state, POLICY) is None
    add_examples(state, 1, T0 + 5, T0 + 5)
    assert decide(state, POLICY) == "new_data"
    trigger = fire(state, "traffic", "new_data", now=T0 + 6)
    assert trigger["trigger_id"] == "traffic-000001" and trigger["new_examples"] == 5
    assert (state.pending, state.last_trigger_time) == (0, T0 + 5)
    add_examples(state, 10, T0 + 10, T0 + 30)  # enough data, but only 25 s later
    assert decide(state, POLICY) is None
    add_examples(state, 1, T0 + 70, T0 + 70)
    assert decide(state, POLICY) == "new_data"
    fire(state, "traffic", "new_data", now=T0 + 71)
    add_examples(state, 2, T0 + 100, T0 + 380)  # a trickle: the schedule catches it
    assert decide(state, POLICY) == "schedule"


def test_quality_alarm_needs_enough_scored_examples_and_new_data():
    assert quality_alarm({"examples": 3, "accuracy": 0.6}, POLICY)
    assert not quality_alarm({"examples": 2, "accuracy": 0.6}, POLICY)
    assert not quality_alarm({"examples": 30, "accuracy": 0.9}, POLICY)
    state = TriggerState(quality_alarm={"accuracy": 0.6})
    add_examples(state, 2, T0, T0 + 1)
    assert decide(state, POLICY) is None
    add_examples(state, 1, T0 + 2, T0 + 2)
    assert decide(state, POLICY) == "quality"


def _example(example_id, t):
    return TimestampedValue({"example_id": example_id, "event_time": utc_iso(t)}, t)


def _options():
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    return options


def test_one_trigger_per_crossing_with_debounce_and_replays():
    """7 distinct examples (3 of them replayed) cross the threshold of 5 once;
    5 more within the debounce interval wait, and fire once the interval has
    passed; the restart state continues the sequence."""
    stream = (
        TestStream()
        .advance_watermark_to(T0)
        .add_elements([_example(f"e{i}", T0 + i) for i in range(4)])
        .add_elements([_example("e1", T0 + 1), _example("e2", T0 + 2)])  # replayed
        .advance_watermark_to(T0 + 10)
        .add_elements([_example(f"e{i}", T0 + 10 + i) for i in range(4, 7)])
        .add_elements([_example("e4", T0 + 14)])  # replayed
        .advance_watermark_to(T0 + 20)
        .add_elements([_example(f"f{i}", T0 + 20 + i) for i in range(5)])
        .advance_watermark_to(T0 + 90)
        .add_elements([_example("g0", T0 + 90)])
        .advance_watermark_to_infinity()
    )
    initial = TriggerState(sequence=41)
    with TestPipeline(options=_options()) as p:
        triggers = p | stream | DecideRetraining(CONFIG, initial)
        assert_that(
            triggers | beam.Map(lambda t: (t["trigger_id"], t["reason"], t["new_examples"])),
            equal_to([("traffic-000042", "new_data", 7), ("traffic-000043", "new_data", 6)]),
        )


def test_trigger_message_is_keyed_by_trigger_id():
    state = TriggerState()
    add_examples(state, 5, T0, T0 + 1)
    message = trigger_message(fire(state, "traffic", "new_data", now=T0))
    assert message.attributes == {"trigger_id": "traffic-000001"}
    body = json.loads(message.data)
    assert body["event_time_start"] == utc_iso(T0) and body["total_examples"] == 5
