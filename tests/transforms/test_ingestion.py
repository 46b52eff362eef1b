import apache_beam as beam
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from tests.helpers import T0, message, traffic_payload
from transforms.ingestion import DeduplicateMessages, message_id


def test_message_id_prefers_attribute_then_pubsub_id_then_content():
    assert message_id(PubsubMessage(b"x", {"message_id": "a"}, message_id="p"), "message_id") == "a"
    assert message_id(PubsubMessage(b"x", {}, message_id="p"), "message_id") == "pubsub:p"
    one = message_id(PubsubMessage(b"x", {"k": "v"}), "message_id")
    assert one == message_id(PubsubMessage(b"x", {"k": "v"}), "message_id")
    assert one != message_id(PubsubMessage(b"y", {"k": "v"}), "message_id")


def test_redelivered_messages_are_dropped_even_across_bundles():
    first = message(traffic_payload(), "m1", T0)
    other = message(traffic_payload(vehicle_count=3), "m2", T0)
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    stream = (
        TestStream()
        .advance_watermark_to(T0)
        .add_elements([TimestampedValue(first, T0), TimestampedValue(other, T0)])
        .advance_processing_time(5)
        .add_elements([TimestampedValue(first, T0)])  # redelivery, later bundle
        .advance_watermark_to(T0 + 10)
        .add_elements([TimestampedValue(first, T0), TimestampedValue(other, T0)])
        .advance_watermark_to_infinity()
    )
    with TestPipeline(options=options) as p:
        out = p | stream | DeduplicateMessages("message_id", window_seconds=600)
        assert_that(out | beam.Map(lambda m: m.attributes["message_id"]), equal_to(["m1", "m2"]))


def _ids(out):
    return out | beam.Map(lambda m: m.attributes["message_id"])


def _streaming() -> PipelineOptions:
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    return options


def _zero() -> float:
    """Processing-time "now" as TestStream's clock starts it (0), before any advance."""
    return 0.0


def test_dedup_forgets_an_id_once_its_processing_time_window_passes():
    m1 = message(traffic_payload(), "m1", T0)
    m2 = message(traffic_payload(vehicle_count=3), "m2", T0)
    stream = (
        TestStream()
        .advance_watermark_to(T0)
        .add_elements([TimestampedValue(m1, T0), TimestampedValue(m2, T0)])
        .advance_processing_time(30)
        .add_elements([TimestampedValue(m1, T0)])  # within the 60 s window: dropped
        .advance_processing_time(31)  # past it: m1 and m2 are forgotten
        .add_elements([TimestampedValue(m1, T0)])  # passes again
        .advance_watermark_to_infinity()
    )
    with TestPipeline(options=_streaming()) as p:
        out = p | stream | DeduplicateMessages("message_id", window_seconds=60, clock=_zero)
        assert_that(_ids(out), equal_to(["m1", "m2", "m1"]))


def test_dedup_state_of_many_distinct_ids_expires():
    """A huge number of distinct ids: each id's state is dropped after the window,
    so state is bounded by the ids of one window (seen again, they all pass)."""
    n = 1500
    msgs = [TimestampedValue(message(traffic_payload(), f"id{i}", T0), T0) for i in range(n)]
    stream = TestStream().advance_watermark_to(T0)
    for start in range(0, n, 100):
        stream = stream.add_elements(msgs[start : start + 100]).advance_processing_time(0.01)
    stream = (
        stream.add_elements(msgs[:10])  # duplicates within the window: dropped
        .advance_processing_time(61)
        .add_elements(msgs)  # after expiry: every id is new again
        .advance_watermark_to_infinity()
    )
    with TestPipeline(options=_streaming()) as p:
        out = p | stream | DeduplicateMessages("message_id", window_seconds=60, clock=_zero)
        assert_that(_ids(out), equal_to([f"id{i}" for i in range(n)] * 2))
