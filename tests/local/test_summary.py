"""Run summary: publisher stats + BigQuery row counts + dead-letter matching."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.cloud import bigquery

from dataset import resources
from dataset.config import load_config
from dataset.tables import table_schemas
from local import summary

TRAFFIC = load_config("configs/traffic.yaml")
_FILLED = ("aggregates", "training_examples", "dead_letter", "training_runs")
REQUIRED_KEYS = {
    "events_published",
    "messages_sent",
    "duplicates_published",
    "malformed_published",
    "dead_letters",
    "malformed_dead_lettered",
    "aggregate_rows",
    "training_rows",
    "tables",
    "duration_seconds",
    "errors",
}
STATS = {
    "events_published": 10,
    "valid_published": 7,
    "malformed_published": 3,
    "malformed_ids": ["m1", "m2", "m3"],
    "duplicates_published": 1,
    "late_published": 0,
    "messages_sent": 11,
    "running": False,
}


def _write_stats(tmp_path, stats: dict[str, Any] = STATS):
    path = tmp_path / "stats.json"
    path.write_text(json.dumps(stats))
    return path


def test_read_stats(tmp_path):
    assert summary.read_stats(None) == {}
    assert summary.read_stats(tmp_path / "missing.json") == {}
    assert summary.read_stats(_write_stats(tmp_path))["messages_sent"] == 11
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        summary.read_stats(bad, attempts=1)


def test_summary_without_bigquery_still_has_every_key(tmp_path):
    result = summary.build_summary(
        "local-project",
        "ds",
        TRAFFIC,
        _write_stats(tmp_path),
        duration_seconds=12.34,
        extra={"run_status": "x"},
        query_bigquery=False,
    )
    assert REQUIRED_KEYS <= set(result)
    assert result["events_published"] == 10
    assert result["malformed_ids_count"] == 3
    assert result["training_rows"] is None
    assert set(result["tables"]) == set(table_schemas(TRAFFIC))
    assert all(n is None for n in result["tables"].values())
    assert result["duration_seconds"] == 12.3
    assert result["run_status"] == "x"
    assert result["errors"] == ["BigQuery not queried"]
    assert list(result)[-1] == "errors"


def test_unreachable_emulator_is_reported_not_raised(monkeypatch):
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", "http://127.0.0.1:1")
    result = summary.build_summary("local-project", "ds", TRAFFIC)
    assert result["dead_letters"] is None
    assert "not answering" in result["errors"][0]


def test_progress_line():
    line = summary.progress_line(
        {
            "events_published": 100,
            "messages_sent": 103,
            "malformed_published": 2,
            "duplicates_published": 1,
            "late_published": 2,
            "tables": {"aggregates": 5, "training_examples": 90, "dead_letter": 2},
            "dead_letters": 2,
            "malformed_dead_lettered": 2,
            "errors": [],
        },
        elapsed_seconds=42,
    )
    assert line.startswith("[   42s] published 100 events (sent 103")
    assert "aggregates=5 training_examples=90 dead_letter=2" in line
    assert "dead letters 2 (malformed matched 2/2)" in line


def _dead_letter(message_id: str) -> dict[str, Any]:
    return {
        "timestamp": "2024-01-01T00:00:00Z",
        "payloadString": "{broken",
        "attributes": [{"key": "message_id", "value": message_id}],
        "errorMessage": "not JSON",
        "step": "parse",
        "messageId": message_id,
    }


def _training(i: int) -> dict[str, Any]:
    return {
        "example_id": f"e{i}",
        "sensor_id": "S1",
        "event_time": "2024-01-01T00:00:00Z",
        "vehicle_count": 3,
        "mean_speed_kmh": 40.0,
        "occupancy": 0.1,
        "hour_of_day": 8.0,
        "road_type": "local",
        "congested": 0,
        "label_source": "inline",
        "ingestion_id": f"m{i}",
        "ingested_at": "2024-01-01T00:00:01Z",
    }


def _aggregate() -> dict[str, Any]:
    return {
        "sensor_id": "S1",
        "window_name": "fixed_1m",
        "window_start": "2024-01-01T00:00:00Z",
        "window_end": "2024-01-01T00:01:00Z",
        "pane_timing": "ON_TIME",
        "pane_index": 0,
        "is_last_pane": True,
        "event_count": 2,
        "computed_at": "2024-01-01T00:01:05Z",
    }


def _run_status(run_id: str, status: str, second: int) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "trigger_id": f"t-{run_id}",
        "status": status,
        "recorded_at": f"2024-01-01T00:00:{second:02d}Z",
    }


def _insert(client: bigquery.Client, table: str, rows: list[dict[str, Any]]) -> None:
    errors = client.insert_rows_json(table, rows, timeout=30)
    assert errors == []


@pytest.mark.emulators
def test_counts_and_malformed_matching(bigquery_client, gcp_project, unique_name, tmp_path):
    resources.ensure_bigquery_tables(gcp_project, unique_name, TRAFFIC, client=bigquery_client)
    prefix = f"{gcp_project}.{unique_name}"
    # m1 twice (a redelivery), m2 once, m3 missing, x9 is some other rejected message
    dead = [_dead_letter(i) for i in ("m1", "m1", "m2", "x9")]
    _insert(bigquery_client, f"{prefix}.dead_letter", dead)
    _insert(bigquery_client, f"{prefix}.training_examples", [_training(i) for i in range(5)])
    _insert(bigquery_client, f"{prefix}.aggregates", [_aggregate()])
    runs = [
        _run_status("r1", "queued", 1),
        _run_status("r1", "running", 2),
        _run_status("r1", "succeeded", 9),
        _run_status("r2", "queued", 3),
        _run_status("r2", "running", 4),
        _run_status("r2", "rejected", 5),
        _run_status("r3", "queued", 8),  # still waiting
    ]
    _insert(bigquery_client, f"{prefix}.training_runs", runs)
    # a table the config does not know about is still counted
    bigquery_client.create_table(
        bigquery.Table(f"{prefix}.zz_not_in_config", schema=[bigquery.SchemaField("x", "INT64")])
    )

    result = summary.build_summary(
        gcp_project, unique_name, TRAFFIC, _write_stats(tmp_path), started_at=0.0
    )
    assert result["errors"] == []
    assert result["dead_letters"] == 4
    assert result["malformed_dead_lettered"] == 2
    assert result["malformed_ids_count"] == 3
    assert result["training_rows"] == 5
    assert result["aggregate_rows"] == 1
    # each run counted once, by its newest status (the table keeps every status row)
    assert result["training_runs"] == 3
    assert result["training_runs_by_status"] == {"queued": 1, "rejected": 1, "succeeded": 1}
    tables = result["tables"]
    assert list(tables)[:3] == ["aggregates", "training_examples", "dead_letter"]
    assert (tables["aggregates"], tables["training_examples"], tables["dead_letter"]) == (1, 5, 4)
    assert list(tables)[-1] == "zz_not_in_config"  # config tables first, then the others
    assert set(tables) == {*table_schemas(TRAFFIC), "zz_not_in_config"}
    assert all(n == 0 for name, n in tables.items() if name not in _FILLED)
    assert result["events_published"] == 10
    assert result["duration_seconds"] > 0


@pytest.mark.emulators
def test_quality_caught_up_once_the_newest_predictions_window_fired(
    bigquery_client, gcp_project, unique_name, tmp_path
):
    resources.ensure_bigquery_tables(gcp_project, unique_name, TRAFFIC, client=bigquery_client)
    prefix = f"{gcp_project}.{unique_name}"
    prediction = {
        "example_id": "e1",
        "sensor_id": "S1",
        "event_time": "2024-01-01T00:01:30Z",
        "prediction": 0.9,
        "predicted_label": 1,
        "model_version": "v1",
        "predicted_at": "2024-01-01T00:01:31Z",
    }
    _insert(bigquery_client, f"{prefix}.predictions", [prediction])

    def quality(start: str, end: str) -> dict[str, Any]:
        return {
            "window_start": start,
            "window_end": end,
            "model_version": "v1",
            "examples": 4,
            "accuracy": 0.75,
            "pane_timing": "ON_TIME",
            "computed_at": end,
        }

    def build() -> dict[str, Any]:
        return summary.build_summary(
            gcp_project, unique_name, TRAFFIC, _write_stats(tmp_path), started_at=0.0
        )

    _insert(
        bigquery_client,
        f"{prefix}.prediction_quality",
        [quality("2024-01-01T00:00:00Z", "2024-01-01T00:01:00Z")],
    )
    assert build()["quality_caught_up"] is False  # e1's window [00:01, 00:02) is still open
    _insert(
        bigquery_client,
        f"{prefix}.prediction_quality",
        [quality("2024-01-01T00:01:00Z", "2024-01-01T00:02:00Z")],
    )
    result = build()
    assert result["quality_caught_up"] is True
    assert result["accuracy_by_model_version"] == {"v1": 0.75}
    # A pipeline behind the wall-clock watermark scores its newest window only in
    # a LATE pane; that pane covers the newest prediction too.
    late = {**prediction, "example_id": "e2", "event_time": "2024-01-01T00:02:30Z"}
    _insert(bigquery_client, f"{prefix}.predictions", [late])
    assert build()["quality_caught_up"] is False
    _insert(
        bigquery_client,
        f"{prefix}.prediction_quality",
        [{**quality("2024-01-01T00:02:00Z", "2024-01-01T00:03:00Z"), "pane_timing": "LATE"}],
    )
    assert build()["quality_caught_up"] is True


@pytest.mark.emulators
def test_cli_prints_one_json_line(bigquery_emulator, gcp_project, unique_name, tmp_path, capsys):
    resources.ensure_bigquery_tables(gcp_project, unique_name, TRAFFIC)
    argv = ["--project", gcp_project, "--bq_dataset", unique_name]
    argv += ["--config", "configs/traffic.yaml", "--stats-file", str(_write_stats(tmp_path))]
    argv += ["--duration-seconds", "5", "--field", "drained=true", "--field", "note=hi", "--json"]
    assert summary.main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    result = json.loads(out)
    assert REQUIRED_KEYS <= set(result)
    assert set(result["tables"]) == set(table_schemas(TRAFFIC))
    assert all(n == 0 for n in result["tables"].values())
    assert result["malformed_dead_lettered"] == 0
    assert result["drained"] is True and result["note"] == "hi"
    assert result["duration_seconds"] == 5.0

    assert summary.main([*argv[:-1], "--progress"]) == 0
    assert capsys.readouterr().out.startswith("published 10 events")


@pytest.mark.emulators
def test_cli_wait_drained(bigquery_emulator, gcp_project, unique_name, tmp_path, capsys):
    resources.ensure_bigquery_tables(gcp_project, unique_name, TRAFFIC)
    argv = ["--project", gcp_project, "--bq_dataset", unique_name, "--config"]
    argv += ["configs/traffic.yaml", "--stats-file", str(_write_stats(tmp_path))]
    argv += ["--wait-drained", "1", "--poll-seconds", "0.3"]
    assert summary.main(argv) == 2  # three malformed messages never dead-lettered
    captured = capsys.readouterr()
    assert "draining: published 10 events" in captured.err
    assert json.loads(captured.out)["malformed_dead_lettered"] == 0


def test_a_completed_run_with_unprocessed_events_is_incomplete():
    done = {"run_status": "completed", "unaccounted": 0, "drained": True}
    assert summary.completion(done) == {"events_not_processed": 0}
    behind = summary.completion({**done, "unaccounted": 77})
    assert behind["run_status"] == "incomplete" and behind["events_not_processed"] == 77
    assert "77 published events never reached any table" in behind["incomplete_reason"]
    assert summary.completion({**done, "drained": False})["run_status"] == "incomplete"
    # Other statuses (a died pipeline, an interrupted run) are kept as they are.
    assert "run_status" not in summary.completion({**done, "run_status": "interrupted"})


@pytest.mark.emulators
def test_summary_reconciles_published_ids(bigquery_client, gcp_project, unique_name, tmp_path):
    resources.ensure_bigquery_tables(gcp_project, unique_name, TRAFFIC, client=bigquery_client)
    prefix = f"{gcp_project}.{unique_name}"
    _insert(bigquery_client, f"{prefix}.training_examples", [_training(i) for i in range(2)])
    _insert(bigquery_client, f"{prefix}.dead_letter", [_dead_letter("m3")])
    ids = tmp_path / "ids.txt"
    ids.write_text("m0\nm1\nm3\nm4\n")
    result = summary.build_summary(
        gcp_project,
        unique_name,
        TRAFFIC,
        _write_stats(tmp_path),
        extra={"run_status": "completed", "drained": True},
        ids_file=ids,
    )
    assert result["errors"] == []
    assert result["unaccounted"] == 1 and result["unaccounted_examples"] == ["m4"]
    assert result["run_status"] == "incomplete" and result["events_not_processed"] == 1
