import base64
import dataclasses
import json
import re

import apache_beam as beam
import pytest
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from dataset.config import Limits
from tests.helpers import ADS, DROP, T0, TRAFFIC, traffic_payload
from transforms.validation import (
    DEAD_LETTER,
    ParseAndValidate,
    RecordError,
    attribute_event_time,
    dead_letter_row,
    parse_event_time,
    parse_message,
    utc_iso,
    validate_payload,
)

SMALL = dataclasses.replace(TRAFFIC, limits=Limits(max_message_bytes=300))


def _attrs(t: float = T0, message_id: str = "m1", **extra: str) -> dict:
    return {"event_time": utc_iso(t), "message_id": message_id, **extra}


def _data(**overrides) -> bytes:
    return json.dumps(traffic_payload(**overrides)).encode()


def _with(text: str, old: str, new: str) -> bytes:
    assert old in text
    return text.replace(old, new, 1).encode()


_VALID_TEXT = json.dumps(traffic_payload())
# Every bad input named in issue 9 that validation itself catches, with the
# part of the reason that tells a user what to fix.
BAD_MESSAGES = {
    "invalid-json": (b"{oops", _attrs(), "payload is not valid JSON"),
    "non-utf8": (b"\xff\xfe{}", _attrs(), "payload is not UTF-8"),
    "empty": (b"", _attrs(), "payload is empty"),
    "oversize": (
        _data(road_type="arterial" + " " * 400),
        _attrs(),
        "over limits.max_message_bytes",
    ),
    "array": (b"[1, 2]", _attrs(), "payload is a JSON array, expected a JSON object"),
    "scalar": (b"42", _attrs(), "payload is a JSON number, expected a JSON object"),
    "missing-field": (_data(occupancy=DROP), _attrs(), r"missing features \['occupancy'\]"),
    "extra-field": (_data(colour="red"), _attrs(), r"unexpected features \['colour'\]"),
    "wrong-type": (_data(mean_speed_kmh="fast"), _attrs(), "expected float, got 'fast'"),
    "out-of-range": (_data(occupancy=3.0), _attrs(), "above the maximum 1"),
    "nan": (_with(_VALID_TEXT, "0.25", "NaN"), _attrs(), "contains NaN"),
    "infinity": (_with(_VALID_TEXT, "0.25", "Infinity"), _attrs(), "contains Infinity"),
    "minus-infinity": (_with(_VALID_TEXT, "48.5", "-Infinity"), _attrs(), "contains -Infinity"),
    "overflow": (_with(_VALID_TEXT, "48.5", "1e999"), _attrs(), "1e999 is out of range"),
    "no-time-attribute": (
        _data(),
        {"message_id": "m1"},
        "event-time attribute 'event_time' is missing: publish each message with it",
    ),
    "bad-time-attribute": (
        _data(),
        _attrs(event_time="yesterday"),
        "event-time attribute 'event_time' does not parse",
    ),
    "nan-time-attribute": (
        _data(),
        _attrs(event_time="NaN"),
        "event-time attribute 'event_time' does not parse",
    ),
    "time-attribute-disagrees": (_data(), _attrs(T0 + 60), "disagrees with field"),
    "too-old": (_data(t=T0 - 3600), _attrs(T0 - 3600), "more than limits.max_event_age_seconds"),
    "future": (_data(t=T0 + 3600), _attrs(T0 + 3600), "more than limits.max_future_seconds"),
    "no-id": (_data(), {"event_time": utc_iso(T0)}, "id attribute 'message_id' is missing"),
}


@pytest.mark.parametrize("kind", sorted(BAD_MESSAGES))
def test_bad_messages_are_rejected_with_an_actionable_reason(kind):
    data, attributes, reason = BAD_MESSAGES[kind]
    with pytest.raises(RecordError, match=reason):
        parse_message(data, attributes, SMALL, published=T0)


def test_a_valid_message_passes_every_check():
    record = parse_message(_data(), _attrs(), SMALL, published=T0 + 100)
    assert record["event_time"] == T0 and record["message_id"] == "m1"
    # Up to max_future_seconds ahead of the publish time is accepted.
    assert parse_message(_data(), _attrs(), SMALL, published=T0 - 299)["event_time"] == T0


def test_nan_event_time_in_an_epoch_field_is_rejected():
    ms = int(T0 * 1000)
    text = json.dumps({"impression_id": "i1", "converted": 1, "ts_millis": ms})
    attrs = {"ts": str(ms), "message_id": "m1"}
    assert parse_message(text.encode(), attrs, ADS, published=T0)["event_time"] == T0
    with pytest.raises(RecordError, match="contains NaN"):
        parse_message(_with(text, str(ms), "NaN"), attrs, ADS, published=T0)
    # Already-decoded payloads (not from JSON text) are checked too.
    with pytest.raises(RecordError, match=r"fields \['ts_millis'\] hold NaN"):
        validate_payload(
            {"impression_id": "i1", "converted": 1, "ts_millis": float("nan")}, ADS, "m"
        )
    # A NaN attribute time never "agrees" with the payload (NaN compares False).
    with pytest.raises(RecordError, match="disagrees"):
        validate_payload(traffic_payload(), TRAFFIC, "m1", element_time=float("nan"))


def test_event_time_attribute_accepts_rfc3339_and_epoch_millis():
    assert attribute_event_time({"event_time": "2023-11-14T22:14:00Z"}, TRAFFIC) == T0
    assert attribute_event_time({"event_time": str(int(T0 * 1000))}, TRAFFIC) == T0
    with pytest.raises(RecordError, match="does not parse"):
        attribute_event_time({"event_time": "2023-11-14T22:14:00"}, TRAFFIC)  # no zone


def test_valid_traffic_record_is_typed():
    record = validate_payload(traffic_payload(vehicle_count=12.0), TRAFFIC, "m1", T0)
    assert record["kind"] == "features"
    assert record["key"] == "S0001"
    assert record["event_time"] == T0
    assert record["features"]["vehicle_count"] == 12 and isinstance(
        record["features"]["vehicle_count"], int
    )
    assert record["label"] == 0


@pytest.mark.parametrize(
    "overrides, error",
    [
        ({"occupancy": DROP}, r"missing features \['occupancy'\]"),
        ({"colour": "red"}, r"unexpected features \['colour'\]"),
        ({"mean_speed_kmh": "fast"}, "expected float"),
        ({"vehicle_count": 3.5}, "expected int"),
        ({"vehicle_count": True}, "expected int"),
        ({"occupancy": 1.7}, "above the maximum 1"),
        ({"mean_speed_kmh": -1}, "below the minimum 0"),
        ({"road_type": "motorway"}, "not one of"),
        ({"occupancy": [0.1, 0.2]}, "expected 1 value, got list of 2"),
        ({"occupancy": None}, "is null"),
        ({"sensor_id": DROP}, "key field 'sensor_id' is missing"),
        ({"congested": 2}, "expected 0 or 1"),
        ({"event_time": "yesterday"}, "not an ISO-8601 time"),
        ({"event_time": "2023-11-14T22:14:00"}, "without a timezone"),
    ],
)
def test_invalid_records_name_the_problem(overrides, error):
    with pytest.raises(RecordError, match=error):
        validate_payload(traffic_payload(**overrides), TRAFFIC, "m1")


def test_all_problems_are_reported_together():
    with pytest.raises(RecordError) as e:
        validate_payload(traffic_payload(occupancy=DROP, colour="x", road_type="?"), TRAFFIC, "m")
    assert (
        "missing" in str(e.value) and "unexpected" in str(e.value) and "not one of" in str(e.value)
    )


def test_event_time_attribute_must_agree_with_payload():
    with pytest.raises(RecordError, match="disagrees"):
        validate_payload(traffic_payload(), TRAFFIC, "m1", element_time=T0 + 60)
    validate_payload(traffic_payload(), TRAFFIC, "m1", element_time=T0 + 0.5)


def test_unlabeled_inline_record_is_valid_without_label():
    record = validate_payload(traffic_payload(congested=DROP), TRAFFIC, "m1")
    assert record["label"] is None


def test_separate_label_messages():
    ms = int(T0 * 1000)
    features = validate_payload(
        {
            "impression_id": "i1",
            "ad_id": "ad7",
            "ts_millis": ms,
            "bid_price": 1.5,
            "slot_position": 2,
            "device": "mobile",
            "user_recent_clicks": 4,
        },
        ADS,
        "m1",
    )
    assert features["join_id"] == "i1" and features["label"] is None
    label = validate_payload(
        {"impression_id": "i1", "converted": 1, "ts_millis": ms + 5000}, ADS, "m2"
    )
    assert label["kind"] == "label" and label["label"] == 1 and label["event_time"] == T0 + 5
    with pytest.raises(RecordError, match="unexpected fields"):
        validate_payload(
            {"impression_id": "i1", "converted": 1, "ts_millis": ms, "x": 1}, ADS, "m3"
        )
    with pytest.raises(RecordError, match="join key"):
        validate_payload({"converted": 1, "ts_millis": ms}, ADS, "m3")


def test_event_time_formats():
    assert parse_event_time("2023-11-14T22:14:00Z", "iso8601") == T0
    assert parse_event_time(int(T0 * 1000), "epoch_millis") == T0
    assert parse_event_time(T0, "epoch_seconds") == T0
    assert utc_iso(T0) == "2023-11-14T22:14:00.000000Z"


def test_dead_letter_row_keeps_payload_and_attributes():
    row = dead_letter_row(b"\xffbad", {"b": "2", "a": "1"}, "boom", "Parse", "tb", "m9", now=T0)
    assert row["payloadString"] == "\ufffdbad"
    assert base64.b64decode(row["payloadBytes"]) == b"\xffbad"
    assert row["attributes"] == [{"key": "a", "value": "1"}, {"key": "b", "value": "2"}]
    assert (row["errorMessage"], row["step"], row["messageId"]) == ("boom", "Parse", "m9")
    assert row["timestamp"] == utc_iso(T0)


def test_event_times_beyond_any_date_are_rejected_not_crashing():
    huge = 10**15  # milliseconds: year ~33658
    attrs = {"event_time": str(huge), "message_id": "m1"}
    data = json.dumps(traffic_payload()).encode()
    with pytest.raises(RecordError, match="disagrees"):
        parse_message(data, attrs, TRAFFIC, published=T0)
    text = json.dumps({"impression_id": "i1", "converted": 1, "ts_millis": huge * 1000})
    ads_attrs = {"ts": str(huge * 1000), "message_id": "m1"}
    with pytest.raises(RecordError, match="not a representable date"):
        parse_message(text.encode(), ads_attrs, ADS, published=None)


def _streaming_options() -> PipelineOptions:
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    return options


def test_poison_messages_become_dead_letters_and_later_messages_still_flow():
    """Every bad input in one stream, valid messages before and after them."""
    published = T0 + 5  # the source's timestamp: publish time
    before = [
        PubsubMessage(_data(sensor=f"B{i}"), _attrs(message_id=f"before{i}")) for i in range(3)
    ]
    poison = [
        PubsubMessage(data, {**attrs, "message_id": kind} if "message_id" in attrs else attrs)
        for kind, (data, attrs, _) in sorted(BAD_MESSAGES.items())
    ]
    after = [PubsubMessage(_data(sensor=f"A{i}"), _attrs(message_id=f"after{i}")) for i in range(3)]
    stream = (
        TestStream()
        .advance_watermark_to(T0)
        .add_elements([TimestampedValue(m, published) for m in before + poison])
        .advance_processing_time(1)
        .add_elements([TimestampedValue(m, published) for m in after])
        .advance_watermark_to_infinity()
    )
    with TestPipeline(options=_streaming_options()) as p:
        parsed = p | stream | ParseAndValidate(SMALL)
        records = parsed.records | "WithTimestamps" >> beam.Map(
            lambda r, ts=beam.DoFn.TimestampParam: (r["message_id"], float(ts))
        )
        expected_ids = [f"before{i}" for i in range(3)] + [f"after{i}" for i in range(3)]
        assert_that(records, equal_to([(i, T0) for i in expected_ids]), label="EventTime")

        def check_dead_letters(rows):
            by_id = {row["messageId"]: row for row in rows}
            expected = {k for k, (_, attrs, _) in BAD_MESSAGES.items() if "message_id" in attrs}
            assert set(by_id) == expected | {None}, sorted(by_id, key=str)
            for kind, (data, _, reason) in BAD_MESSAGES.items():
                row = by_id[kind if kind in by_id else None]
                assert row["step"] == "ParseAndValidate"
                assert re.search(reason, row["errorMessage"]), (kind, row)
                if kind in by_id:
                    assert base64.b64decode(row["payloadBytes"]) == data

        assert_that(parsed[DEAD_LETTER], check_dead_letters, label="DeadLetters")
