"""The service's per-key history: the store (bounds, refresh, failures) and its use."""

from __future__ import annotations

import copy
import datetime as dt

import numpy as np
import pytest
import yaml

from dataset.config import config_from_dict
from dataset.times import utc_iso
from serving.history import KeyHistory, bigquery_loader, events_per_key, source_columns
from serving.predictor import Predictor, RequestError, split_history, validate_instances
from tests.helpers import T0, TRAFFIC, traffic_payload

with open("configs/traffic.yaml", encoding="utf-8") as f:
    _RAW = copy.deepcopy(yaml.safe_load(f))
_RAW["history_features"] = {
    "occ_mean_2": {"of": "occupancy", "agg": "mean", "last": 2},
    "last_congested": {"agg": "last_label"},
}
CONFIG = config_from_dict(_RAW, source="test")
_NO_HISTORY = copy.deepcopy(_RAW)
del _NO_HISTORY["history_features"]
PLAIN = config_from_dict(_NO_HISTORY, source="test")
TTL = 600


def _row(key: str, t: float, occupancy: float, congested: int, example_id: str | None = None):
    """A training row as BigQuery returns it (only the columns the store reads)."""
    return {
        "sensor_id": key,
        "event_time": dt.datetime.fromtimestamp(t, tz=dt.UTC),
        "example_id": example_id or f"{key}-{t}",
        "occupancy": occupancy,
        "congested": congested,
    }


def test_the_store_reads_only_the_columns_history_needs():
    assert source_columns(CONFIG) == ["occupancy", "congested"]


def test_each_key_keeps_its_newest_events_in_order_once_each():
    rows = [
        _row("A", T0 + 120, 0.3, 1),
        _row("A", T0, 0.1, 0),
        _row("A", T0 + 60, 0.2, 1),
        _row("A", T0 + 120, 0.3, 1),  # the same example twice (a redelivery)
        {**_row("B", T0, 0.5, 0), "event_time": utc_iso(T0)},  # a string timestamp
        {"sensor_id": None, "event_time": utc_iso(T0)},
    ]
    by_key, dropped = events_per_key(rows, CONFIG, max_keys=10)
    assert dropped == 0
    assert [e[0] for e in by_key["A"].events] == [T0 + 60, T0 + 120]  # depth 2
    assert by_key["A"].trimmed and not by_key["B"].trimmed
    assert by_key["A"].events[-1][2:] == ({"occupancy": 0.3}, 1)


def test_past_max_keys_the_least_recently_active_keys_are_dropped():
    rows = [_row(k, T0 + i, 0.5, 0) for i, k in enumerate("CABD")]
    store = KeyHistory(CONFIG, lambda: rows, max_keys=2, ttl_seconds=TTL)
    assert store.refresh(1.0)
    assert len(store) == 2 and store.dropped_keys == 2
    assert store.lookup("D", T0 + 60) is not None and store.lookup("B", T0 + 60) is not None
    assert store.lookup("C", T0 + 60) is None and store.lookup("A", T0 + 60) is None


def test_a_request_sees_only_the_events_older_than_itself():
    rows = [_row("A", T0, 0.2, 1), _row("A", T0 + 60, 0.4, 0)]
    store = KeyHistory(CONFIG, lambda: rows, ttl_seconds=TTL)
    store.refresh(1.0)
    assert store.lookup("A", T0 + 120) == {"occ_mean_2": pytest.approx(0.3), "last_congested": 0.0}
    assert store.lookup("A", T0 + 60) == {"occ_mean_2": 0.2, "last_congested": 1.0}
    assert store.lookup("A", T0) is None  # nothing before it
    assert store.lookup("B", T0 + 60) is None  # an unknown key
    assert store.lookup("A", T0 + 60 + TTL + 1) is None  # idle past the TTL, as the stream


def test_a_late_request_that_needs_dropped_events_has_no_history():
    rows = [_row("A", T0 + 60 * i, 0.1 * i, i % 2) for i in range(4)]
    store = KeyHistory(CONFIG, lambda: rows, ttl_seconds=TTL)
    store.refresh(1.0)
    # Kept: the events at T0+120 and T0+180. A request at T0+150 needs T0+60 too.
    assert store.lookup("A", T0 + 150) is None
    assert store.lookup("A", T0 + 200) == {"occ_mean_2": pytest.approx(0.25), "last_congested": 1.0}


def test_a_failed_refresh_keeps_the_last_good_store_and_is_counted():
    answers = [[_row("A", T0, 0.2, 1)], RuntimeError("bigquery down")]

    def load():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    store = KeyHistory(CONFIG, load, ttl_seconds=TTL)
    assert store.lookup("A", T0 + 60) is None  # nothing loaded yet
    assert store.refresh(1.0) is True and store.lookup("A", T0 + 60) is not None
    assert store.refresh(2.0) is False
    assert store.lookup("A", T0 + 60) is not None
    assert store.errors == 1 and store.refreshed_at == 1.0


def test_a_store_needs_history_features_and_a_positive_bound():
    with pytest.raises(ValueError, match="no history_features"):
        KeyHistory(PLAIN, list)
    with pytest.raises(ValueError, match="--history-max-keys"):
        KeyHistory(CONFIG, list, max_keys=0)


# --------------------------------------------------------------- requests


def test_an_instance_may_carry_all_its_history_values():
    instance = traffic_payload("A", occ_mean_2=0.5, last_congested=None)
    payload, given = split_history(instance, CONFIG)
    assert given == {"occ_mean_2": 0.5, "last_congested": None}
    assert "occ_mean_2" not in payload and payload["sensor_id"] == "A"
    (record,) = validate_instances([instance], CONFIG)
    assert record["history"] == given
    assert split_history(traffic_payload("A"), CONFIG)[1] is None
    # Without history_features the names are unknown fields, as before.
    with pytest.raises(RequestError, match="unexpected features"):
        validate_instances([instance], PLAIN)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"occ_mean_2": 0.5}, "missing"),
        ({"occ_mean_2": "high", "last_congested": 1}, "finite number"),
        ({"occ_mean_2": True, "last_congested": 1}, "finite number"),
    ],
)
def test_history_values_given_in_part_or_of_the_wrong_type_are_rejected(extra, words):
    with pytest.raises(RequestError, match=words) as caught:
        validate_instances([traffic_payload("A", **extra)], CONFIG)
    assert caught.value.status == 422
    assert caught.value.field.startswith("instances[0].")


def _model():
    calls = []

    def predict(batch):
        calls.append(batch)
        return batch[:, -2:-1]  # the encoded occ_mean_2

    return (lambda: ("v1", predict)), calls


def test_predictions_say_where_their_history_came_from():
    model, calls = _model()
    store = KeyHistory(CONFIG, lambda: [_row("A", T0 - 60, 0.8, 1)], ttl_seconds=TTL)
    store.refresh(1.0)
    instances = [
        traffic_payload("A", T0),
        traffic_payload("B", T0),
        traffic_payload("C", T0, occ_mean_2=0.2, last_congested=0),
    ]
    out = Predictor(CONFIG, model, history=store.lookup).predict(
        validate_instances(instances, CONFIG)
    )
    sources = [(p["sensor_id"], p["history"]) for p in out["predictions"]]
    assert sources == [("A", "found"), ("B", "missing"), ("C", "given")]
    np.testing.assert_allclose(calls[0][:, -2], [0.8, 0.5, 0.2])  # missing: the default 0.5
    # No store: what the instance does not carry is missing.
    out = Predictor(CONFIG, model).predict(validate_instances(instances[:1], CONFIG))
    assert out["predictions"][0]["history"] == "missing"


def test_without_history_features_predictions_are_unchanged():
    model, _ = _model()
    out = Predictor(PLAIN, model).predict(validate_instances([traffic_payload("A")], PLAIN))
    assert "history" not in out["predictions"][0]


# -------------------------------------------------------------- the service


def test_the_service_refreshes_the_store_and_counts_failures(tmp_path):
    from fastapi.testclient import TestClient

    from model.keras_model import build_model
    from model.registry import ModelRegistry
    from serving.app import Service, create_app
    from tests.serving.conftest import wait_for

    registry = ModelRegistry(str(tmp_path / "registry"))
    registry.promote(registry.publish(build_model(CONFIG, seed=1), {}, config=CONFIG))
    loads = []

    def load():
        loads.append(1)
        if len(loads) > 1:
            raise RuntimeError("bigquery down")
        return [_row("A", T0, 0.2, 1)]

    store = KeyHistory(CONFIG, load, ttl_seconds=TTL)
    service = Service(CONFIG, registry.root, history=store, history_refresh_seconds=0.05)
    with TestClient(create_app(service)) as client:
        assert service.wait_ready(60)
        wait_for(lambda: store.errors >= 2, 30, "two failed refreshes")
        response = client.post("/v1/predict", json={"instances": [traffic_payload("A", T0 + 60)]})
        assert response.json()["predictions"][0]["history"] == "found"  # the last good set
        assert client.get("/readyz").json()["history_keys"] == 1
        metrics = client.get("/metrics").text
    assert "serving_history_keys 1.0" in metrics
    assert 'serving_history_total{source="found"} 1.0' in metrics
    errors = [line for line in metrics.splitlines() if line.startswith("serving_history_refresh")]
    assert errors and float(errors[0].split()[-1]) >= 2


def test_without_history_features_the_table_is_never_read(monkeypatch, traffic_registry):
    from serving import app

    def no_bigquery(project):
        raise AssertionError("no BigQuery client without history_features")

    monkeypatch.setattr("dataset.resources.bigquery_client", no_bigquery)
    root, _, _ = traffic_registry
    args = app.build_parser().parse_args(
        ["--config", "configs/ad_conversions.yaml", "--registry", root]
        + ["--history-table", "p.d.training_examples"]
    )
    service = app.build_service(args)
    assert service.history is None and service.ready is False
    with pytest.raises(ValueError, match="no history_features"):
        app.Service(PLAIN, root, history=KeyHistory(CONFIG, list))


def test_the_table_defaults_to_the_configs_training_table(monkeypatch, tmp_path):
    from serving import app

    queries = []

    class FakeClient:
        def query(self, sql):
            queries.append(sql)
            raise RuntimeError("offline")

    monkeypatch.setattr("dataset.resources.bigquery_client", lambda project: FakeClient())
    path = tmp_path / "history.yaml"
    path.write_text(yaml.safe_dump(_RAW))
    args = app.build_parser().parse_args(
        ["--config", str(path), "--registry", str(tmp_path / "registry")]
        + ["--project", "proj-1", "--bq_dataset", "ds"]
    )
    service = app.build_service(args)
    assert service.history.refresh(1.0) is False
    assert "FROM `proj-1.ds.training_examples`" in queries[0]
    assert "`occupancy`" in queries[0] and "`congested`" in queries[0]


@pytest.mark.emulators
def test_the_loader_reads_the_training_table(bigquery_client, gcp_project, unique_name):
    """The store's BigQuery loader on a training-examples table (emulator)."""
    from dataset.resources import ensure_bigquery_dataset, table_definition
    from dataset.tables import TableLayout, training_schema
    from transforms.labeling import training_row
    from transforms.validation import validate_payload

    ensure_bigquery_dataset(bigquery_client, gcp_project, unique_name)
    table = f"{gcp_project}.{unique_name}.training_examples"
    layout = TableLayout("event_time", ("sensor_id",))
    bigquery_client.create_table(table_definition(table, training_schema(CONFIG), layout))
    rows = []
    for i, (key, occupancy, congested) in enumerate([("A", 0.2, 1), ("A", 0.4, 0), ("B", 0.9, 1)]):
        payload = traffic_payload(key, T0 + 60 * i, occupancy=occupancy, congested=congested)
        record = {**validate_payload(payload, CONFIG, f"m{i}"), "history": {}}
        rows.append(training_row(CONFIG, record, congested, T0, "inline", now=T0))
    assert bigquery_client.insert_rows_json(table, rows) == []
    store = KeyHistory(CONFIG, bigquery_loader(bigquery_client, table, CONFIG), ttl_seconds=TTL)
    assert store.refresh(1.0)
    assert store.lookup("A", T0 + 300) == {"occ_mean_2": pytest.approx(0.3), "last_congested": 0.0}
    assert store.lookup("B", T0 + 300) == {"occ_mean_2": 0.9, "last_congested": 1.0}
    assert TRAFFIC.tables.training_examples == "training_examples"
