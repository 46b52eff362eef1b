"""The publisher CLI against the Pub/Sub emulator: publish, pull back, reconcile."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from dataset.config import load_config
from dataset.times import format_event_time, parse_event_time
from simulator import publish
from tests.simulator import checks

pytestmark = pytest.mark.emulators

TRAFFIC = load_config("configs/traffic.yaml")
ADS = load_config("configs/ad_conversions.yaml")


@pytest.fixture
def topic_and_subscription(pubsub_emulator: str, gcp_project: str):
    """A fresh topic with one subscription; both deleted afterwards."""
    from google.cloud import pubsub_v1

    name = f"sim-{uuid.uuid4().hex[:10]}"
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    topic = publisher.create_topic(name=f"projects/{gcp_project}/topics/{name}", timeout=10).name
    sub = subscriber.create_subscription(
        name=f"projects/{gcp_project}/subscriptions/{name}", topic=topic, timeout=10
    ).name
    yield topic, sub
    subscriber.delete_subscription(subscription=sub, timeout=10)
    publisher.delete_topic(topic=topic, timeout=10)
    subscriber.close()


def _pull_all(subscription: str, expected: int, timeout: float = 30.0) -> list:
    """Pulls until ``expected`` messages arrived, then once more to catch extras."""
    from google.api_core import exceptions as gexc
    from google.cloud import pubsub_v1

    subscriber = pubsub_v1.SubscriberClient()
    out = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = len(out) >= expected
        try:
            resp = subscriber.pull(
                request={"subscription": subscription, "max_messages": 1000},
                timeout=1.0 if done else 5.0,
                retry=None,
            )
        except gexc.DeadlineExceeded:
            resp = None
        if not resp or not resp.received_messages:
            if done:
                break
            continue
        out.extend(m.message for m in resp.received_messages)
        subscriber.acknowledge(
            request={
                "subscription": subscription,
                "ack_ids": [m.ack_id for m in resp.received_messages],
            },
            timeout=10,
        )
    subscriber.close()
    return out


def test_simulate_publishes_and_stats_reconcile(topic_and_subscription, tmp_path):
    topic, sub = topic_and_subscription
    stats_file = tmp_path / "stats.json"
    rc = publish.main(
        [
            "simulate",
            "--config", "configs/traffic.yaml",
            "--topic", topic,
            "--rate", "400",
            "--duration", "0.5",
            "--malformed-fraction", "0.1",
            "--late-fraction", "0.1",
            "--late-seconds", "60",
            "--duplicate-fraction", "0.1",
            "--stats-file", str(stats_file),
        ]
    )  # fmt: skip
    assert rc == 0
    stats = json.loads(stats_file.read_text())
    assert stats["running"] is False
    assert 190 <= stats["events_published"] <= 201
    assert stats["messages_sent"] == stats["events_published"] + stats["duplicates_published"]
    assert stats["duplicates_published"] > 0 and stats["malformed_published"] > 0

    messages = _pull_all(sub, stats["messages_sent"])
    assert len(messages) == stats["messages_sent"]
    ids = collections.Counter(m.attributes["message_id"] for m in messages)
    assert len(ids) == stats["events_published"]
    assert sum(n - 1 for n in ids.values()) == stats["duplicates_published"]
    malformed = set()
    for m in messages:
        assert set(m.attributes) == {"event_time", "message_id"}
        t = parse_event_time(m.attributes["event_time"], "iso8601")
        assert m.attributes["event_time"].endswith("Z")
        assert stats["first_event_time"] <= m.attributes["event_time"] <= stats["last_event_time"]
        if checks.problems(m.data, TRAFFIC, m.attributes):
            malformed.add(m.attributes["message_id"])
        else:
            payload = json.loads(m.data)
            assert parse_event_time(payload["event_time"], "iso8601") == t
    assert malformed == set(stats["malformed_ids"])
    assert len(malformed) == stats["malformed_published"]


def test_replay_with_rebased_time(topic_and_subscription, tmp_path):
    topic, sub = topic_and_subscription
    stats_file = tmp_path / "stats.json"
    t0 = time.time()
    rc = publish.main(
        [
            "replay", "data/ad_conversions_sample.jsonl",
            "--config", "configs/ad_conversions.yaml",
            "--topic", topic,
            "--rate", "2000",
            "--rebase-time",
            "--stats-file", str(stats_file),
        ]
    )  # fmt: skip
    assert rc == 0
    stats = json.loads(stats_file.read_text())
    assert stats["events_published"] == 350 and stats["skipped_rows"] == 0
    messages = _pull_all(sub, 350)
    assert len(messages) == 350
    for m in messages:
        payload = json.loads(m.data)
        t = payload["ts_millis"] / 1000.0
        assert t0 - 1 <= t <= time.time()
        assert m.attributes["ts"] == format_event_time(t, "iso8601")
        assert checks.problems(m.data, ADS, m.attributes) == []


def test_missing_topic_fails_with_clear_message(pubsub_emulator, gcp_project, caplog):
    rc = publish.main(
        ["simulate", "--config", "configs/traffic.yaml",
         "--topic", f"projects/{gcp_project}/topics/does-not-exist-{uuid.uuid4().hex[:6]}",
         "--duration", "1"]
    )  # fmt: skip
    assert rc == 1
    assert "does not exist" in caplog.text


def test_sigterm_stops_cleanly_and_writes_final_stats(topic_and_subscription, tmp_path):
    topic, sub = topic_and_subscription
    stats_file = tmp_path / "stats.json"
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "simulator.publish", "simulate",
            "--config", "configs/traffic.yaml", "--topic", topic, "--rate", "200",
            "--stats-file", str(stats_file),
        ],
        env=dict(os.environ),
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if stats_file.exists() and json.loads(stats_file.read_text())["events_published"]:
                break
            time.sleep(0.1)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    stats = json.loads(stats_file.read_text())
    assert stats["running"] is False and stats["events_published"] > 0
    assert len(_pull_all(sub, stats["messages_sent"])) == stats["messages_sent"]
