import base64
import json

import pytest

from tests.helpers import ADS, DROP, T0, TRAFFIC, traffic_payload
from transforms.validation import (
    RecordError,
    dead_letter_row,
    parse_event_time,
    parse_message,
    utc_iso,
    validate_payload,
)


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


def test_parse_message_rejects_non_json_and_missing_id():
    with pytest.raises(RecordError, match="not valid JSON"):
        parse_message(b"{oops", {"message_id": "m"}, TRAFFIC, None)
    with pytest.raises(RecordError, match="not UTF-8"):
        parse_message(b"\xff\xfe", {"message_id": "m"}, TRAFFIC, None)
    with pytest.raises(RecordError, match="JSON object"):
        parse_message(b"[1, 2]", {"message_id": "m"}, TRAFFIC, None)
    with pytest.raises(RecordError, match="id attribute"):
        parse_message(json.dumps(traffic_payload()).encode(), {}, TRAFFIC, None)


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
