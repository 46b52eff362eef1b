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
    COUNT_PANE_SECONDS,
    DecideRetraining,
    TriggerState,
    add_examples,
    decide,
    fire,
    initial_state_from_bigquery,
    new_epoch,
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


# Pipeline tests: 50 new examples per trigger, so count panes of 5 (a tenth).
PANE_POLICY = dataclasses.replace(POLICY, min_new_examples=50, max_interval_seconds=None)
PANE_CONFIG = dataclasses.replace(TRAFFIC, retraining=PANE_POLICY)


def _examples(prefix, n, t):
    return [_example(f"{prefix}{i}", t + i) for i in range(n)]


def test_one_trigger_per_crossing_with_debounce_and_replays():
    """55 distinct examples (8 replayed within their pane) cross the threshold
    of 50 once; 50 more within the debounce interval wait, and fire once an
    example lands after the interval; the restart state continues the sequence
    under its epoch."""
    stream = (
        TestStream()
        .advance_watermark_to(T0)
        .add_elements(_examples("e", 30, T0) + _examples("e", 5, T0))  # 5 replayed
        .add_elements(_examples("f", 25, T0 + 30) + _examples("f", 3, T0 + 30))  # 3 replayed
        .advance_watermark_to(T0 + 60)
        .add_elements(_examples("g", 50, T0 + 60))  # only 6..55 s after the trigger
        .advance_watermark_to(T0 + 120)
        .add_elements(_examples("h", 5, T0 + 120))
        .advance_watermark_to_infinity()
    )
    initial = TriggerState(sequence=41, epoch="E1")
    with TestPipeline(options=_options()) as p:
        triggers = p | stream | DecideRetraining(PANE_CONFIG, initial)
        assert_that(
            triggers | beam.Map(lambda t: (t["trigger_id"], t["reason"], t["new_examples"])),
            equal_to(
                [("traffic-E1-000042", "new_data", 55), ("traffic-E1-000043", "new_data", 55)]
            ),
        )


def test_a_backlog_far_behind_the_watermark_still_counts_and_triggers():
    """Rows landing a day behind the watermark (a backlog on a runner whose
    watermark follows the wall clock) count toward min_new_examples: 48 fill
    count panes, 3 more wait for the pane's processing-time deadline."""
    day = 86_400
    stream = (
        TestStream()
        .advance_processing_time(T0 + day)  # a wall clock past the events
        .advance_watermark_to(T0 + day)
        .add_elements(_examples("b", 48, T0))
        .add_elements(_examples("c", 3, T0 + 60))
        .advance_processing_time(COUNT_PANE_SECONDS + 1)
        .advance_watermark_to(T0 + 2 * day)
        .advance_watermark_to_infinity()
    )
    with TestPipeline(options=_options()) as p:
        triggers = p | stream | DecideRetraining(PANE_CONFIG, TriggerState(epoch="E1"))
        assert_that(
            triggers
            | beam.Map(lambda t: (t["trigger_id"], t["new_examples"], t["event_time_end"])),
            equal_to([("traffic-E1-000001", 51, utc_iso(T0 + 62))]),
        )


def test_trigger_message_is_keyed_by_trigger_id():
    state = TriggerState()
    add_examples(state, 5, T0, T0 + 1)
    message = trigger_message(fire(state, "traffic", "new_data", now=T0))
    assert message.attributes == {"trigger_id": "traffic-000001"}
    body = json.loads(message.data)
    assert body["event_time_start"] == utc_iso(T0) and body["total_examples"] == 5


class _RefusingTable:
    """A BigQuery client whose retrain_triggers table never got a row (refused)."""

    def query(self, sql):
        rows = [] if "ORDER BY sequence" in sql else [{"n": 0, "s": None, "e": None, "total": 0}]
        return type("Job", (), {"result": lambda self: rows})()


def test_trigger_ids_differ_across_restarts_even_when_the_table_missed_a_trigger():
    """Launch 1 publishes trigger #1, but BigQuery refused its row. Launch 2
    rebuilds its state from the table alone (sequence 0 again): its first
    trigger must not reuse launch 1's id, or the launcher acks it as a duplicate."""
    ids = []
    for _ in range(2):
        state = initial_state_from_bigquery(_RefusingTable(), "p", "d", CONFIG)
        add_examples(state, 5, T0, T0 + 1)
        ids.append(fire(state, "traffic", "new_data", now=T0)["trigger_id"])
    assert ids[0] != ids[1]
    assert all(i.startswith("traffic-") and i.endswith("-000001") for i in ids)


def test_pipelines_built_without_a_state_get_distinct_epochs():
    a, b = DecideRetraining(CONFIG), DecideRetraining(CONFIG)
    assert a._initial.epoch and a._initial.epoch != b._initial.epoch
    kept = DecideRetraining(CONFIG, TriggerState(sequence=3, epoch="E9"))
    assert (kept._initial.sequence, kept._initial.epoch) == (3, "E9")


def test_the_launcher_accepts_an_epoch_trigger():
    from trainer.trigger_messages import parse_trigger

    assert new_epoch(now=T0).startswith("20231114T221400")
    state = TriggerState(epoch=new_epoch(now=T0))
    add_examples(state, 5, T0, T0 + 1)
    message = trigger_message(fire(state, "traffic", "new_data", now=T0))
    parsed = parse_trigger(message.data, message.attributes, "traffic")
    assert parsed.trigger_id == f"traffic-{state.epoch}-000001" and parsed.sequence == 1


def test_trigger_state_stays_small_however_many_examples_land():
    """Memory bound: one state cell per dataset, a few scalars (no per-example data)."""
    import pickle

    from transforms.triggers import _RetrainTriggerFn

    class Cell:
        value = None

        def read(self):
            return self.value

        def write(self, value):
            self.value = value

    fn, cell = _RetrainTriggerFn(CONFIG, TriggerState(epoch="E1")), Cell()
    sizes = []
    for i in range(2000):
        list(fn.process(("traffic", ("examples", (7, T0 + i, T0 + i))), state_param=cell))
        if i % 500 == 0:
            list(fn.process(("traffic", ("quality", {"examples": 9, "accuracy": 0.1})), cell))
        sizes.append(len(pickle.dumps(cell.read())))
    assert max(sizes) < 1024 and cell.read().sequence > 10
