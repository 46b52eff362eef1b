"""Fixtures of the control-plane tests: a fresh retrain topic, subscription and dataset."""

from __future__ import annotations

import pytest

from tests.trainer.control_helpers import TRAFFIC, make_world


@pytest.fixture
def world(pubsub_emulator, bigquery_client, gcp_project, unique_name, tmp_path, monkeypatch):
    """A retrain topic + subscription and the BigQuery tables, all fresh; deleted after."""
    from google.cloud import pubsub_v1

    from dataset.resources import ensure_bigquery_tables, ensure_pubsub

    topic, subscription = ensure_pubsub(gcp_project, unique_name, f"{unique_name}-launcher")
    ensure_bigquery_tables(gcp_project, unique_name, TRAFFIC, client=bigquery_client)
    w = make_world(bigquery_client, gcp_project, unique_name, tmp_path, topic, subscription)
    monkeypatch.setenv("FAKE_TRAINED_LOG", str(w.trained_log))
    yield w
    subscriber = pubsub_v1.SubscriberClient()
    subscriber.delete_subscription(request={"subscription": subscription}, timeout=10)
    w.publisher.delete_topic(request={"topic": topic}, timeout=10)
    subscriber.close()
    bigquery_client.delete_dataset(unique_name, delete_contents=True, not_found_ok=True)
