"""trainer.file_trigger: validation of dropped files, the inbox, and the launched run."""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.helpers import ADS, T0, TRAFFIC, traffic_payload
from trainer import file_trigger
from trainer.file_trigger import LocalInbox, parse_file
from transforms.validation import utc_iso


def _lines(*payloads) -> bytes:
    return b"".join(
        (p if isinstance(p, bytes) else json.dumps(p).encode()) + b"\n" for p in payloads
    )


def test_valid_lines_become_training_rows_and_the_rest_dead_letters():
    data = _lines(
        traffic_payload("S1", T0),
        b"{not json",
        traffic_payload("S2", T0 + 60, congested=None),
        traffic_payload("S3", T0 + 120, occupancy=7.0),
        traffic_payload("S4", T0 + 180, congested=1),
    )
    loaded = parse_file("in/day1.jsonl", data, TRAFFIC, now=T0 + 1000)
    assert [r["sensor_id"] for r in loaded.rows] == ["S1", "S4"]
    assert loaded.rows[1]["congested"] == 1 and loaded.rows[1]["label_source"] == "file"
    assert loaded.rows[0]["example_id"] == f"{loaded.file_id}:1"
    assert loaded.file_id.startswith("day1.jsonl-")
    assert (loaded.event_start, loaded.event_end) == (T0, T0 + 180)
    errors = [d["errorMessage"] for d in loaded.dead_letters]
    assert len(errors) == 3 and "not JSON" in errors[0] and "congested" in errors[1]
    assert "occupancy" in errors[2]
    assert {d["step"] for d in loaded.dead_letters} == {"FileTrigger"}
    assert loaded.dead_letters[0]["attributes"] == [
        {"key": "file", "value": "in/day1.jsonl"},
        {"key": "line", "value": "2"},
    ]
    # Same content, same ids: a file loaded twice gives the same example ids.
    again = parse_file("in/day1.jsonl", data, TRAFFIC, now=T0 + 2000)
    assert [r["example_id"] for r in again.rows] == [r["example_id"] for r in loaded.rows]


def test_separate_labels_join_within_the_file():
    ms = int(T0 * 1000)
    features = {
        "ad_id": "ad1",
        "ts_millis": ms,
        "impression_id": "i1",
        "bid_price": 1.5,
        "slot_position": 2,
        "device": "mobile",
        "user_recent_clicks": 3,
    }
    data = _lines(
        features,
        {**features, "impression_id": "i2"},  # no label line: negative (negative_on_timeout)
        {"impression_id": "i1", "ts_millis": ms + 5000, "converted": 1},
        {"impression_id": "i9", "ts_millis": ms + 5000, "converted": 1},  # no features
    )
    loaded = parse_file("ads.jsonl", data, ADS)
    assert [(r["example_id"], r["converted"]) for r in loaded.rows] == [("i1", 1), ("i2", 0)]
    assert loaded.rows[0]["label_time"] == utc_iso(T0 + 5)
    (dead,) = loaded.dead_letters
    assert "i9" in dead["errorMessage"]


def test_inbox_skips_partial_and_unsettled_files_and_moves_processed_ones(tmp_path):
    inbox = LocalInbox(str(tmp_path))
    for name in ("a.jsonl", "b.jsonl.tmp", ".hidden", "c.jsonl"):
        (tmp_path / name).write_text("{}\n")
    old = time.time() - 10
    os.utime(tmp_path / "a.jsonl", (old, old))
    assert inbox.pending(settle_seconds=5) == ["a.jsonl"]  # c.jsonl was just written
    assert inbox.pending(settle_seconds=0) == ["a.jsonl", "c.jsonl"]
    moved = inbox.mark_processed("a.jsonl")
    assert moved == str(tmp_path / "processed" / "a.jsonl")
    assert inbox.pending(settle_seconds=0) == ["c.jsonl"]


def test_storage_events_for_processed_objects_are_ignored():
    assert (
        file_trigger.handle_storage_event(None, {"bucket": "b", "name": "in/processed/x"}) is None
    )
    assert file_trigger.handle_storage_event(None, {"bucket": "b", "name": "in/x.tmp"}) is None


def test_cli_refuses_a_bad_topic(capsys):
    argv = ["--watch", "d", "--config", "configs/traffic.yaml", "--project", "p"]
    rc = file_trigger.main([*argv, "--bq_dataset", "d", "--retrain_topic", "t"])
    assert rc == 2 and "--retrain_topic" in capsys.readouterr().err


@pytest.mark.emulators
def test_dropped_file_is_loaded_and_starts_one_recorded_run(world, gcp_project, bigquery_client):
    from tests.trainer.control_helpers import run_until
    from trainer import runs

    inbox = world.tmp_path / "incoming"
    inbox.mkdir()
    payloads = [traffic_payload(f"S{i}", T0 + 60 * i, congested=i % 2) for i in range(20)]
    data = _lines(*payloads, b"garbage")
    (inbox / "batch.jsonl").write_bytes(data)
    argv = [
        "--watch",
        str(inbox),
        "--config",
        "configs/traffic.yaml",
        "--project",
        gcp_project,
        "--bq_dataset",
        world.dataset,
        "--retrain_topic",
        world.topic,
        "--once",
    ]
    assert file_trigger.main(argv) == 0
    assert not (inbox / "batch.jsonl").exists()
    assert (inbox / "processed" / "batch.jsonl").exists()
    table = f"{gcp_project}.{world.dataset}"
    count = runs.query_rows(
        bigquery_client, f"SELECT COUNT(*) AS n FROM `{table}.training_examples`"
    )
    assert count[0]["n"] == 20
    dead = runs.query_rows(bigquery_client, f"SELECT step FROM `{table}.dead_letter`")
    assert [d["step"] for d in dead] == ["FileTrigger"]
    (trigger,) = runs.query_rows(bigquery_client, f"SELECT * FROM `{table}.retrain_triggers`")
    assert trigger["reason"] == "file" and trigger["new_examples"] == 20
    # The pipeline's trigger state after a restart ignores triggers it did not fire.
    from transforms.triggers import initial_state_from_bigquery

    state = initial_state_from_bigquery(bigquery_client, gcp_project, world.dataset, TRAFFIC)
    assert (state.sequence, state.last_trigger_time, state.total) == (0, None, 20)

    # The same file dropped again (a retry) is the same trigger: still one run.
    (inbox / "batch-again.jsonl").write_bytes(data)
    assert file_trigger.main(argv) == 0
    launcher = world.make_launcher()
    stats = run_until(launcher, lambda s: s["runs_succeeded"] == 1 and s["duplicate_triggers"] == 1)
    assert stats["runs_started"] == 1
    statuses = [r["status"] for r in world.history(trigger["trigger_id"])]
    assert statuses[0] == "queued" and statuses[-1] == "succeeded"
    launcher.shutdown()
