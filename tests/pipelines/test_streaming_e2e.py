"""The real streaming pipeline on the DirectRunner against both emulators."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from dataset.resources import ensure_pubsub
from tests.e2e import count, publish, running_pipeline, wait_for_start, wait_until
from tests.helpers import DROP, traffic_payload
from transforms.validation import utc_iso

pytestmark = pytest.mark.emulators


def _attrs(t: float, message_id: str, attribute: str = "event_time") -> dict:
    return {attribute: utc_iso(t), "message_id": message_id}


def test_traffic_events_land_in_bigquery_with_every_malformed_message_dead_lettered(
    gcp_project, pubsub_emulator, bigquery_client, unique_name, tmp_path
):
    _, subscription = ensure_pubsub(gcp_project, unique_name, f"{unique_name}-sub")
    now = time.time()
    valid = [
        (traffic_payload(f"S{i % 3}", now, vehicle_count=i, congested=i % 2), _attrs(now, f"v{i}"))
        for i in range(60)
    ]
    malformed = [
        (b"not json", _attrs(now, "bad-json")),
        (traffic_payload(occupancy=DROP, t=now), _attrs(now, "bad-missing")),
        (traffic_payload(colour="red", t=now), _attrs(now, "bad-extra")),
        (traffic_payload(mean_speed_kmh="fast", t=now), _attrs(now, "bad-type")),
        (traffic_payload(occupancy=3.0, t=now), _attrs(now, "bad-range")),
        (traffic_payload(occupancy=[0.1, 0.2], t=now), _attrs(now, "bad-valency")),
    ]
    duplicates = valid[:5]  # redelivered: same message id
    # Published after the duplicates: once it has landed, the pulls that held
    # the duplicates were processed (the emulator delivers in publish order).
    sentinel = (traffic_payload("S-sentinel", now, congested=0), _attrs(now, "sentinel"))
    log = tmp_path / "pipeline.log"
    with running_pipeline(
        gcp_project, "configs/traffic.yaml", subscription, unique_name, log
    ) as proc:
        publish(gcp_project, unique_name, valid + malformed + duplicates)

        def landed() -> bool:
            return (
                count(bigquery_client, unique_name, "training_examples") >= 60
                and count(bigquery_client, unique_name, "dead_letter") >= len(malformed)
                and count(bigquery_client, unique_name, "aggregates", "window_name='fixed_1m'") >= 3
                and set(_final_fixed_counts(bigquery_client, unique_name).values()) == {20}
            )

        wait_until(landed, timeout=150, proc=proc, log_path=log)
        publish(gcp_project, unique_name, [sentinel])
        wait_until(
            lambda: count(
                bigquery_client, unique_name, "training_examples", "example_id='sentinel'"
            ),
            timeout=60,
            proc=proc,
            log_path=log,
        )

    assert count(bigquery_client, unique_name, "training_examples") == 61
    ids = {
        row["example_id"]
        for row in bigquery_client.query(
            f"SELECT example_id FROM `{unique_name}.training_examples`"
        ).result()
    }
    assert ids == {f"v{i}" for i in range(60)} | {"sentinel"}
    dead = {
        row["messageId"]: row
        for row in bigquery_client.query(
            f"SELECT messageId, step, errorMessage, payloadString, attributes "
            f"FROM `{unique_name}.dead_letter`"
        ).result()
    }
    assert set(dead) == {attrs["message_id"] for _, attrs in malformed}
    assert dead["bad-range"]["step"] == "ParseAndValidate"
    assert "above the maximum" in dead["bad-range"]["errorMessage"]
    assert dead["bad-json"]["payloadString"] == "not json"
    assert {"key": "message_id", "value": "bad-json"} in dead["bad-json"]["attributes"]
    # All 60 events share one event time, so each sensor has one 1-minute window.
    # The runner's watermark follows the wall clock: whether a message is read
    # before or after its window closes depends on timing, so it counts in the
    # ON_TIME pane or in a LATE one. Panes accumulate: the last pane holds every
    # event exactly once; a sensor has at most one ON_TIME pane and no EARLY one.
    final = _final_fixed_counts(bigquery_client, unique_name)
    assert {s: final.get(s) for s in ("S0", "S1", "S2")} == {"S0": 20, "S1": 20, "S2": 20}
    panes = list(
        bigquery_client.query(
            f"SELECT sensor_id, pane_timing, pane_index FROM `{unique_name}.aggregates` "
            "WHERE window_name = 'fixed_1m'"
        ).result()
    )
    assert {row["pane_timing"] for row in panes} <= {"ON_TIME", "LATE"}
    on_time = [row["sensor_id"] for row in panes if row["pane_timing"] == "ON_TIME"]
    assert len(on_time) == len(set(on_time))
    indices = [(row["sensor_id"], row["pane_index"]) for row in panes]
    assert len(indices) == len(set(indices))


def _final_fixed_counts(client, dataset: str) -> dict[str, int]:
    """Per sensor, the event count of the latest (accumulated) 1-minute pane."""
    from google.api_core.exceptions import NotFound

    query = (
        f"SELECT sensor_id, pane_index, event_count FROM `{dataset}.aggregates` "
        "WHERE window_name = 'fixed_1m'"
    )
    latest: dict[str, tuple[int, int]] = {}
    try:
        rows = list(client.query(query).result())
    except NotFound:
        return {}
    for row in rows:
        seen = latest.get(row["sensor_id"])
        if seen is None or row["pane_index"] > seen[0]:
            latest[row["sensor_id"]] = (row["pane_index"], row["event_count"])
    return {sensor: n for sensor, (_, n) in latest.items()}


def test_second_dataset_joins_late_labels(
    gcp_project, pubsub_emulator, bigquery_client, unique_name, tmp_path
):
    """Ad conversions: the label arrives in a later message; unconverted impressions
    become negatives after max_delay_seconds; a conversion without an impression
    is dead-lettered."""
    with open("configs/ad_conversions.yaml") as f:
        raw = yaml.safe_load(f)
    raw["label"]["max_delay_seconds"] = 25
    config_path = tmp_path / "ads.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    _, subscription = ensure_pubsub(gcp_project, unique_name, f"{unique_name}-sub")

    def impression(i: int, now: float) -> tuple[dict, dict]:
        payload = {
            "impression_id": f"imp{i}",
            "ad_id": f"ad{i % 4}",
            "ts_millis": int(now * 1000),
            "bid_price": 1.0 + i / 10,
            "slot_position": 1 + i % 5,
            "device": "mobile",
            "user_recent_clicks": i,
        }
        return payload, _attrs(now, f"f{i}", attribute="ts")

    log = tmp_path / "pipeline.log"
    with running_pipeline(gcp_project, str(config_path), subscription, unique_name, log) as proc:
        wait_for_start(proc, log)
        now = time.time()  # the labels' 25 s deadline counts from here
        publish(gcp_project, unique_name, [impression(i, now) for i in range(20)])
        # Conversions happen 3 s after the impressions (event time; the join
        # takes either order, so nothing needs to wait for the impressions).
        later = now + 3
        conversions = [
            (
                {"impression_id": f"imp{i}", "converted": 1, "ts_millis": int(later * 1000)},
                _attrs(later, f"c{i}", attribute="ts"),
            )
            for i in range(0, 20, 3)
        ]
        orphan = (
            {"impression_id": "nope", "converted": 1, "ts_millis": int(later * 1000)},
            _attrs(later, "orphan", attribute="ts"),
        )
        publish(gcp_project, unique_name, [*conversions, orphan])

        def landed() -> bool:
            return (
                count(bigquery_client, unique_name, "ad_training_examples") >= 20
                and count(bigquery_client, unique_name, "ad_dead_letter") >= 1
            )

        wait_until(landed, timeout=120, proc=proc, log_path=log)

    rows = {
        row["example_id"]: (row["converted"], row["label_source"], row["ad_id"])
        for row in bigquery_client.query(
            f"SELECT example_id, converted, label_source, ad_id "
            f"FROM `{unique_name}.ad_training_examples`"
        ).result()
    }
    assert len(rows) == 20
    for i in range(20):
        expected = (1, "message") if i % 3 == 0 else (0, "timeout")
        assert rows[f"imp{i}"][:2] == expected, i
    dead = list(
        bigquery_client.query(
            f"SELECT messageId, step, errorMessage FROM `{unique_name}.ad_dead_letter`"
        ).result()
    )
    assert [(d["messageId"], d["step"]) for d in dead] == [("orphan", "JoinLabels")]
    assert "no feature message" in dead[0]["errorMessage"]


def test_poison_messages_are_dead_lettered_and_the_pipeline_keeps_running(
    gcp_project, pubsub_emulator, bigquery_client, unique_name, tmp_path
):
    """Issue 9's poison kinds, published into a running pipeline, then valid messages."""
    _, subscription = ensure_pubsub(gcp_project, unique_name, f"{unique_name}-sub")
    log = tmp_path / "pipeline.log"
    with running_pipeline(
        gcp_project, "configs/traffic.yaml", subscription, unique_name, log
    ) as proc:
        wait_for_start(proc, log)
        now = time.time()
        text = json.dumps(traffic_payload("S1", now))
        poison = [
            # Used to fail the source's whole pull (timestamp_attribute).
            (text.encode(), {"event_time": "not-a-time", "message_id": "p-bad-attr"}),
            (text.encode(), {"event_time": "NaN", "message_id": "p-nan-attr"}),
            (text.encode(), {"message_id": "p-no-attr"}),
            (
                text.replace(json.dumps(utc_iso(now)), "NaN").encode(),
                _attrs(now, "p-nan-payload"),
            ),
            (b"\xff\xfe\x00garbage", _attrs(now, "p-non-utf8")),
        ]
        before = [
            (traffic_payload(f"S{i}", now, congested=0), _attrs(now, f"before{i}"))
            for i in range(5)
        ]
        after = [
            (traffic_payload(f"S{i}", now, congested=1), _attrs(now, f"after{i}")) for i in range(5)
        ]
        publish(gcp_project, unique_name, before + poison)
        wait_until(
            lambda: count(bigquery_client, unique_name, "dead_letter") >= len(poison),
            timeout=120,
            proc=proc,
            log_path=log,
        )
        publish(gcp_project, unique_name, after)  # the pipeline still runs
        wait_until(
            lambda: count(bigquery_client, unique_name, "training_examples") >= 10,
            timeout=120,
            proc=proc,
            log_path=log,
        )
        assert proc.poll() is None
    ids = {
        row["example_id"]
        for row in bigquery_client.query(
            f"SELECT example_id FROM `{unique_name}.training_examples`"
        ).result()
    }
    assert ids == {f"before{i}" for i in range(5)} | {f"after{i}" for i in range(5)}
    dead = {
        row["messageId"]: row["errorMessage"]
        for row in bigquery_client.query(
            f"SELECT messageId, errorMessage FROM `{unique_name}.dead_letter`"
        ).result()
    }
    assert set(dead) == {attrs["message_id"] for _, attrs in poison}
    assert "'event_time' does not parse" in dead["p-bad-attr"]
    assert "'event_time' does not parse" in dead["p-nan-attr"]
    assert "'event_time' is missing" in dead["p-no-attr"]
    assert "contains NaN" in dead["p-nan-payload"]
    assert "not UTF-8" in dead["p-non-utf8"]
    assert "Exception at bundle" not in log.read_text(errors="replace")
