"""Resource creation: idempotent, and loud about schema drift."""

from __future__ import annotations

import pytest
from google.api_core.exceptions import NotFound
from google.cloud import bigquery

from dataset import resources
from dataset.config import load_config
from dataset.tables import TableLayout, table_layouts, table_schemas

TRAFFIC = load_config("configs/traffic.yaml")
ADS = load_config("configs/ad_conversions.yaml")


def test_schema_differences_ignores_type_aliases_order_and_default_mode():
    expected = [
        {"name": "a", "type": "INT64", "mode": "REQUIRED"},
        {"name": "b", "type": "FLOAT64", "mode": "NULLABLE"},
        {"name": "c", "type": "BOOL"},
    ]
    actual = [
        {"name": "c", "type": "BOOLEAN", "mode": "NULLABLE"},
        {"name": "b", "type": "FLOAT"},
        {"name": "a", "type": "INTEGER", "mode": "REQUIRED"},
    ]
    assert resources.schema_differences(expected, actual) == []


def test_schema_differences_names_each_column():
    expected = [
        {"name": "a", "type": "INT64", "mode": "REQUIRED"},
        {"name": "b", "type": "STRING"},
        {
            "name": "r",
            "type": "RECORD",
            "mode": "REPEATED",
            "fields": [{"name": "k", "type": "STRING"}],
        },
    ]
    actual = [
        {"name": "a", "type": "STRING", "mode": "REQUIRED"},
        {"name": "extra", "type": "INT64"},
        {
            "name": "r",
            "type": "RECORD",
            "mode": "REPEATED",
            "fields": [{"name": "k", "type": "INT64"}],
        },
    ]
    diffs = resources.schema_differences(expected, actual)
    assert diffs == [
        "a: expected INT64 REQUIRED, found STRING REQUIRED",
        "b: missing (expected STRING NULLABLE)",
        "r.k: expected STRING NULLABLE, found INT64 NULLABLE",
        "extra: unexpected column (INT64 NULLABLE)",
    ]


def test_paths():
    assert resources.topic_path("p", "t") == "projects/p/topics/t"
    assert resources.topic_path("p", "projects/q/topics/t") == "projects/q/topics/t"
    assert resources.subscription_path("p", "s") == "projects/p/subscriptions/s"


def test_client_accepts_emulator_host_without_scheme(monkeypatch):
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", "127.0.0.1:1")
    client = resources.bigquery_client("local-project")
    assert client._connection.API_BASE_URL == "http://127.0.0.1:1"


class _RecordingClient:
    """Stands in for ``bigquery.Client``: records the tables it is asked to create.

    ``existing`` maps table ids to what ``create_table(exists_ok=True)`` returns
    for tables that already exist.
    """

    def __init__(
        self, existing: dict[str, bigquery.Table] | None = None, dataset_exists: bool = False
    ):
        self.created: dict[str, bigquery.Table] = {}
        self.existing = existing or {}
        self.dataset_exists = dataset_exists
        self.created_datasets: list[str] = []

    def get_dataset(self, dataset_ref, **_):
        if self.dataset_exists:
            return bigquery.Dataset(dataset_ref)
        raise NotFound(dataset_ref)

    def create_dataset(self, dataset, **_):
        assert not self.dataset_exists, "an existing dataset must not be created again"
        self.created_datasets.append(dataset.dataset_id)
        return dataset

    def create_table(self, table, exists_ok=False, **_):
        assert exists_ok
        self.created[table.table_id] = table
        return self.existing.get(table.table_id, table)


@pytest.mark.parametrize("config", [TRAFFIC, ADS], ids=["traffic", "ad_conversions"])
def test_tables_are_created_day_partitioned_and_clustered_by_key(config):
    client = _RecordingClient()
    resources.ensure_bigquery_tables("demo-project", "d", config, client=client)
    assert client.created_datasets == ["d"]
    t, key = config.tables, config.key_field
    sent = {
        name: (
            table.to_api_repr()["timePartitioning"],
            (table.to_api_repr().get("clustering") or {}).get("fields"),
        )
        for name, table in client.created.items()
    }
    assert sent == {
        t.aggregates: ({"type": "DAY", "field": "window_start"}, [key]),
        t.training_examples: ({"type": "DAY", "field": "event_time"}, [key]),
        t.dead_letter: ({"type": "DAY", "field": "timestamp"}, None),
        t.predictions: ({"type": "DAY", "field": "event_time"}, [key]),
        t.prediction_quality: ({"type": "DAY", "field": "window_start"}, None),
        t.retrain_triggers: ({"type": "DAY", "field": "created_at"}, None),
        t.training_runs: ({"type": "DAY", "field": "recorded_at"}, None),
        t.data_quarantine: ({"type": "DAY", "field": "quarantined_at"}, None),
    }


def test_an_existing_table_with_another_layout_is_logged_not_altered(caplog):
    name = TRAFFIC.tables.training_examples
    table_id = f"demo-project.d.{name}"
    plain = bigquery.Table(
        table_id,
        schema=[bigquery.SchemaField.from_api_repr(dict(f)) for f in table_schemas(TRAFFIC)[name]],
    )
    client = _RecordingClient(existing={name: plain}, dataset_exists=True)
    with caplog.at_level("WARNING", logger="dataset.resources"):
        tables = resources.ensure_bigquery_tables("demo-project", "d", TRAFFIC, client=client)
    assert tables[name] is plain
    assert client.created_datasets == []  # only read: dataset-level rights suffice
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert table_id in warnings[0]
    assert "partitioning (None, None)" in warnings[0]
    assert "expected ('DAY', 'event_time') and ['sensor_id']" in warnings[0]


def test_layout_difference():
    layout = TableLayout("event_time", ("sensor_id",))
    table = resources.table_definition("p.d.t", [], layout)
    assert resources.layout_difference(layout, table) is None
    table.clustering_fields = None
    assert "clustering []" in resources.layout_difference(layout, table)


@pytest.mark.emulators
@pytest.mark.parametrize("config", [TRAFFIC, ADS], ids=["traffic", "ad_conversions"])
def test_bigquery_tables_idempotent(bigquery_client, gcp_project, unique_name, config):
    first = resources.ensure_bigquery_tables(gcp_project, unique_name, config)
    second = resources.ensure_bigquery_tables(gcp_project, unique_name, config)
    expected = table_schemas(config)
    assert list(first) == list(second) == list(expected)
    for name, fields in expected.items():
        table = bigquery_client.get_table(f"{gcp_project}.{unique_name}.{name}")
        actual = [f.to_api_repr() for f in table.schema]
        assert resources.schema_differences(fields, actual) == [], name
        # bqemulator keeps partitioning and clustering: the same request as in the cloud.
        assert resources.layout_difference(table_layouts(config)[name], table) is None, name


@pytest.mark.emulators
def test_bigquery_schema_mismatch_names_table_and_columns(
    bigquery_client, gcp_project, unique_name
):
    table_name = TRAFFIC.tables.training_examples
    fields = [dict(f) for f in table_schemas(TRAFFIC)[table_name]]
    fields = [f for f in fields if f["name"] != "road_type"]  # a missing column
    for f in fields:
        if f["name"] == "vehicle_count":
            f["type"] = "STRING"  # a changed type
    bigquery_client.create_dataset(f"{gcp_project}.{unique_name}")
    bigquery_client.create_table(
        bigquery.Table(
            f"{gcp_project}.{unique_name}.{table_name}",
            schema=[bigquery.SchemaField.from_api_repr(f) for f in fields],
        )
    )
    with pytest.raises(ValueError) as err:
        resources.ensure_bigquery_tables(gcp_project, unique_name, TRAFFIC)
    message = str(err.value)
    assert f"{gcp_project}.{unique_name}.{table_name}" in message
    assert "vehicle_count: expected INT64 NULLABLE, found STRING NULLABLE" in message
    assert "road_type: missing" in message
    # the other tables were still created
    assert bigquery_client.get_table(f"{gcp_project}.{unique_name}.{TRAFFIC.tables.aggregates}")


@pytest.mark.emulators
def test_pubsub_topic_and_subscription_idempotent(pubsub_emulator, gcp_project, unique_name):
    from google.cloud import pubsub_v1

    topic, sub = resources.ensure_pubsub(gcp_project, unique_name, f"{unique_name}-sub")
    again = resources.ensure_pubsub(gcp_project, topic, sub)
    assert again == (topic, sub)
    assert topic == f"projects/{gcp_project}/topics/{unique_name}"
    subscriber = pubsub_v1.SubscriberClient()
    try:
        got = subscriber.get_subscription(request={"subscription": sub}, timeout=30)
    finally:
        subscriber.close()
    assert got.topic == topic
    assert got.ack_deadline_seconds == 60

    resources.ensure_pubsub(gcp_project, unique_name)  # topic only
    with pytest.raises(ValueError, match="reads .* not .*other"):
        resources.ensure_pubsub(gcp_project, f"{unique_name}-other", sub)


@pytest.mark.emulators
def test_cli(pubsub_emulator, bigquery_emulator, gcp_project, unique_name, capsys):
    argv = ["--project", gcp_project, "--config", "configs/traffic.yaml"]
    argv += ["--topic", unique_name, "--subscription", f"{unique_name}-s"]
    argv += ["--bq_dataset", unique_name]
    assert resources.main(argv) == 0
    assert resources.main(argv) == 0
    out = capsys.readouterr().out
    assert f"table: {gcp_project}.{unique_name}.{TRAFFIC.tables.dead_letter}" in out
    assert f"subscription: projects/{gcp_project}/subscriptions/{unique_name}-s" in out
