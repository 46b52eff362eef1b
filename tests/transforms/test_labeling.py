import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from tests.helpers import ADS, T0, TRAFFIC, traffic_payload
from tests.transforms.state_doubles import Cell, Timer
from transforms.labeling import BuildTrainingExamples, _JoinLabelFn, training_row
from transforms.validation import DEAD_LETTER, validate_payload

MS = int(T0 * 1000)


def _impression(imp, t):
    payload = {
        "impression_id": imp,
        "ad_id": "ad1",
        "ts_millis": int(t * 1000),
        "bid_price": 2.0,
        "slot_position": 1,
        "device": "desktop",
        "user_recent_clicks": 3,
    }
    return TimestampedValue(validate_payload(payload, ADS, f"f-{imp}"), t)


def _conversion(imp, t, message_id=None):
    payload = {"impression_id": imp, "converted": 1, "ts_millis": int(t * 1000)}
    return TimestampedValue(validate_payload(payload, ADS, message_id or f"l-{imp}"), t)


def _options():
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    return options


def test_training_row_carries_lineage():
    record = validate_payload(traffic_payload(congested=1), TRAFFIC, "m7")
    row = training_row(TRAFFIC, record, 1, T0, "inline", now=T0 + 3)
    assert row["example_id"] == "m7" and row["ingestion_id"] == "m7"
    assert row["sensor_id"] == "S0001" and row["congested"] == 1
    assert row["event_time"] == "2023-11-14T22:14:00.000000Z"
    assert row["ingested_at"] == "2023-11-14T22:14:03.000000Z"
    assert row["occupancy"] == 0.25 and row["label_source"] == "inline"


def test_late_labels_join_earlier_features_and_timeouts_become_negatives():
    """i1: label 100 s after features (joined). i2: label arrives *before* its
    features (joined). i3: no label within 600 s (negative on timeout).
    i4: a label whose features never come (dead letter). i1 again: a second
    label for an already joined impression (dead letter)."""
    stream = (
        TestStream()
        .advance_watermark_to(T0)
        .add_elements([_impression("i1", T0), _impression("i3", T0 + 1)])
        .add_elements([_conversion("i2", T0 + 2), _conversion("i4", T0 + 3)])
        .advance_watermark_to(T0 + 50)
        .add_elements([_impression("i2", T0 + 5)])
        .advance_watermark_to(T0 + 100)
        .add_elements([_conversion("i1", T0 + 100)])
        .add_elements([_conversion("i1", T0 + 110, message_id="l-i1-again")])
        .advance_watermark_to(T0 + 2000)
        .advance_watermark_to_infinity()
    )
    with TestPipeline(options=_options()) as p:
        out = p | stream | BuildTrainingExamples(ADS)
        assert_that(
            out["examples"]
            | beam.Map(lambda r: (r["example_id"], r["converted"], r["label_source"], r["ad_id"])),
            equal_to(
                [
                    ("i1", 1, "message", "ad1"),
                    ("i2", 1, "message", "ad1"),
                    ("i3", 0, "timeout", "ad1"),
                ]
            ),
            label="Examples",
        )
        assert_that(
            out[DEAD_LETTER] | beam.Map(lambda r: (r["messageId"], r["step"])),
            equal_to([("l-i4", "JoinLabels"), ("l-i1-again", "JoinLabels")]),
            label="DeadLetters",
        )


def test_inline_labels_make_examples_and_skip_unlabeled():
    labeled = validate_payload(traffic_payload(congested=1), TRAFFIC, "a")
    unlabeled = validate_payload(traffic_payload(congested=None), TRAFFIC, "b")
    with TestPipeline(options=_options()) as p:
        out = p | beam.Create([labeled, unlabeled]) | BuildTrainingExamples(TRAFFIC)
        assert_that(out["examples"] | beam.Map(lambda r: r["example_id"]), equal_to(["a"]))
        assert_that(out[DEAD_LETTER], equal_to([]), label="NoDeadLetters")

    def clear(self):
        self.at = None


def _features(t=T0):
    return _impression("k", t).value


def _label(t=T0 + 5):
    return _conversion("k", t).value


@pytest.mark.parametrize(
    "sequence",
    [
        ["features"],
        ["label"],
        ["features", "label"],
        ["label", "features"],
        ["features", "label", "label"],
        ["features", "features"],
        ["label", "label"],
        ["label", "features", "features"],
    ],
)
def test_join_state_is_always_covered_by_a_timer_that_clears_it(sequence):
    """Memory bound: after every element, a key that holds any state has its
    expiry timer set, and that timer leaves every cell of the key empty."""
    fn = _JoinLabelFn(ADS)
    cells = {"features_state": Cell(), "label_state": Cell(), "joined_state": Cell()}
    timer = Timer()
    for kind in sequence:
        record = _features() if kind == "features" else _label()
        list(fn.process(("k", record), expiry=timer, **cells))
        if any(c.read() is not None for c in cells.values()):
            assert timer.at is not None, f"state held without a timer after {kind}"
    list(fn.expire(fire_time=timer.at, **cells))
    assert all(c.read() is None for c in cells.values())
