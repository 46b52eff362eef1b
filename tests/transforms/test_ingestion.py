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
