"""trainer.task end to end against the BigQuery emulator, and trainer.runs."""

from __future__ import annotations

import datetime as dt
import itertools
import json

import pytest

from dataset.config import load_config
from dataset.tables import TRAINING_RUNS_SCHEMA
from tests.trainer.test_data import END, training_rows
from trainer import runs
from trainer.task import build_parser, main, options_from_args

TRAFFIC = load_config("configs/traffic.yaml")


def test_parser_accepts_the_launcher_arguments():
    args = build_parser().parse_args(
        [
            "--config",
            "configs/traffic.yaml",
            "--project",
            "local-project",
            "--bq_dataset",
            "d",
            "--registry",
            "/tmp/r",
            "--run-id",
            "r1",
            "--trigger-id",
            "t1",
            "--backend",
            "vertex",
            "--drift-block-threshold",
            "none",
        ]
    )
    opts = options_from_args(args)
    assert (opts.run_id, opts.trigger_id, opts.backend) == ("r1", "t1", "vertex")
    assert opts.rows is None and opts.drift_block_threshold is None


def test_typed_rows_are_checked_before_writing():
    now = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    row = runs.typed_row(
        {
            "run_id": "r",
            "trigger_id": "t",
            "status": "succeeded",
            "recorded_at": now,
            "started_at": now.timestamp(),
            "finished_at": "2024-01-01T00:00:05Z",
            "rows_train": 10.0,
            "metrics": {"accuracy": 0.9},
            "promoted": True,
            "model_version": None,
        },
        TRAINING_RUNS_SCHEMA,
    )
    assert row["recorded_at"] == row["started_at"] == "2024-01-01T00:00:00.000000Z"
    assert row["finished_at"] == "2024-01-01T00:00:05.000000Z"
    assert row["rows_train"] == 10 and json.loads(row["metrics"]) == {"accuracy": 0.9}
    assert "model_version" not in row
    for bad in (
        {"rows_train": "ten"},
        {"rows_train": 1.5},
        {"promoted": "yes"},
        {"recorded_at": "yesterday"},
        {"unknown": 1},
        {"run_id": None},
    ):
        with pytest.raises(ValueError):
            runs.typed_row(
                {"run_id": "r", "trigger_id": "t", "status": "running", "recorded_at": now, **bad},
                TRAINING_RUNS_SCHEMA,
            )
    with pytest.raises(ValueError, match="status"):
        runs.record_run_status(None, "p.d.t", {"run_id": "r", "trigger_id": "t", "status": "x"})


def test_unreadable_config_is_a_failed_run(capsys):
    code = main(
        [
            "--config",
            "configs/nope.yaml",
            "--project",
            "local-project",
            "--bq_dataset",
            "d",
            "--registry",
            "/tmp/nowhere",
            "--run-id",
            "r",
            "--trigger-id",
            "t",
        ],
        client=object(),
    )
    assert code == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last)["status"] == "failed"


def _insert(client, table: str, rows: list[dict]) -> None:
    for i in range(0, len(rows), 500):
        assert client.insert_rows_json(table, rows[i : i + 500]) == []


def _args(dataset: str, registry: str, run_id: str, project: str) -> list[str]:
    return [
        "--config",
        "configs/traffic.yaml",
        "--project",
        project,
        "--bq_dataset",
        dataset,
        "--registry",
        registry,
        "--run-id",
        run_id,
        "--trigger-id",
        f"trigger-{run_id}",
        "--rows",
        "3000",
        "--epochs",
        "10",
    ]


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.emulators
def test_training_runs_promote_then_reject_invalid_data(
    bigquery_client, gcp_project, unique_name, tmp_path, capsys
):
    from dataset.resources import ensure_bigquery_tables
    from model.registry import ModelRegistry

    dataset = unique_name
    ensure_bigquery_tables(gcp_project, dataset, TRAFFIC, client=bigquery_client)
    registry_root = str(tmp_path / "registry")
    registry = ModelRegistry(registry_root)
    table = f"{gcp_project}.{dataset}.{TRAFFIC.tables.training_examples}"
    try:
        # 3,000 readings at 2/s: 25 minutes, 2.5 simulated days.
        _insert(bigquery_client, table, training_rows(3000, rate=2.0))

        # Run 1: clean data, no current model -> trained, gated, promoted.
        code = main(_args(dataset, registry_root, "run1", gcp_project), client=bigquery_client)
        summary = _last_json(capsys)
        assert code == 0, summary
        assert summary["status"] == "succeeded", summary
        version = summary["model_version"]
        assert registry.current_version() == version
        info = registry.get(version)
        assert info.status == "promoted"
        meta = info.metadata
        assert meta["run_id"] == "run1" and meta["trigger_id"] == "trigger-run1"
        assert meta["parent_version"] is None
        assert meta["training_data"]["rows_train"] + meta["training_data"]["rows_validation"] == (
            3000
        )
        assert meta["statistics"]["rows"] == 3000
        assert meta["metrics"]["accuracy"] >= TRAFFIC.retraining.min_accuracy

        history = runs.run_history(bigquery_client, gcp_project, dataset, TRAFFIC, "run1")
        assert [r["status"] for r in history] == ["running", "succeeded"]
        final = history[-1]
        assert final["promoted"] is True and final["model_version"] == version
        assert final["rows_train"] == summary["rows_train"]
        assert final["backend"] == "local" and final["dataset"] == "traffic"
        assert final["data_start"] < final["data_end"]
        decisions = json.loads(final["gate_decisions"])
        assert decisions["infra"]["passed"] and decisions["quality"]["passed"]
        assert "timings_s" in json.loads(final["metrics"])
        latest = runs.latest_run_status(
            bigquery_client, gcp_project, dataset, TRAFFIC, "trigger-run1"
        )
        assert latest["status"] == "succeeded" and latest["run_id"] == "run1"
        assert (
            runs.latest_run_status(bigquery_client, gcp_project, dataset, TRAFFIC, "nope") is None
        )

        # Run 2: newer rows from a broken feed (occupancy out of range) -> refused.
        broken = training_rows(400, end=END + 200.0, rate=2.0, prefix="bad")
        bad_ids = []
        for i, row in enumerate(broken):
            if i % 4 == 0:
                row["occupancy"] = 3.5
                bad_ids.append(row["example_id"])
        _insert(bigquery_client, table, broken)
        code = main(_args(dataset, registry_root, "run2", gcp_project), client=bigquery_client)
        summary = _last_json(capsys)
        assert code == 0 and summary["status"] == "rejected", summary
        assert summary["reason"].startswith("data validation: out_of_domain occupancy")
        assert registry.current_version() == version
        assert len(registry.versions()) == 1

        history = runs.run_history(bigquery_client, gcp_project, dataset, TRAFFIC, "run2")
        assert [r["status"] for r in history] == ["running", "rejected"]
        assert history[-1]["reason"].startswith("data validation:")
        assert history[-1]["promoted"] is False
        quarantine = [
            dict(r)
            for r in bigquery_client.query(
                f"SELECT * FROM `{gcp_project}.{dataset}.{TRAFFIC.tables.data_quarantine}` "
                "WHERE run_id = 'run2'"
            ).result()
        ]
        assert [(q["check"], q["feature"]) for q in quarantine] == [("out_of_domain", "occupancy")]
        ids = json.loads(quarantine[0]["example_ids"])
        assert ids == bad_ids[:20]
        assert quarantine[0]["rows"] == 3000
        assert quarantine[0]["data_start"] < quarantine[0]["data_end"]

        # Run 3: a crash (the registry path is a file) -> recorded as failed, exit 1.
        not_a_dir = tmp_path / "not-a-registry"
        not_a_dir.write_text("x")
        code = main(_args(dataset, str(not_a_dir), "run3", gcp_project), client=bigquery_client)
        assert code == 1 and _last_json(capsys)["status"] == "failed"
        history = runs.run_history(bigquery_client, gcp_project, dataset, TRAFFIC, "run3")
        # The run's claim (a file in the registry) fails before "running" is recorded.
        assert [r["status"] for r in history] == ["failed"]
        assert history[-1]["error"] and history[-1]["reason"]
    finally:
        bigquery_client.delete_dataset(dataset, delete_contents=True, not_found_ok=True)


def test_config_from_a_uri():
    import os

    from trainer.task import load_config_any

    uri = "file://" + os.path.abspath("configs/traffic.yaml")
    config = load_config_any(uri)
    assert config.name == "traffic" and config.source_path == uri


def test_training_file_window_has_the_querys_rules(tmp_path):
    """read_training_file: latest ingestion per example, time bounds, newest N, oldest first."""
    from dataset.times import utc_iso
    from trainer.data import event_seconds, read_training_file, write_training_file

    rows = training_rows(50, rate=1.0)
    again = dict(rows[10], occupancy=0.5, ingested_at=utc_iso(END + 99.0), ingestion_id="m-re")
    path = str(tmp_path / "rows.jsonl")
    assert write_training_file(path, [*rows, again]) == 51
    window = read_training_file(path, TRAFFIC, rows=100)
    assert len(window) == 50  # the redelivered example once
    assert [r["example_id"] for r in window] == [r["example_id"] for r in rows]
    assert window[10]["occupancy"] == 0.5 and window[10]["ingestion_id"] == "m-re"
    assert isinstance(window[0]["event_time"], dt.datetime)
    newest = read_training_file(path, TRAFFIC, rows=5)
    assert [r["example_id"] for r in newest] == [r["example_id"] for r in rows[-5:]]
    t0 = event_seconds(rows[20])
    bounded = read_training_file(path, TRAFFIC, start=t0, end=t0 + 10)
    assert [r["example_id"] for r in bounded] == [r["example_id"] for r in rows[20:30]]
    assert len(read_training_file(path, TRAFFIC)) == min(
        50, TRAFFIC.retraining.training_window_rows
    )
    (tmp_path / "bad.jsonl").write_text("[1, 2]\n")
    with pytest.raises(ValueError, match="not a training row"):
        read_training_file(str(tmp_path / "bad.jsonl"), TRAFFIC)
    with pytest.raises(ValueError, match="does not exist"):
        read_training_file(str(tmp_path / "nope.jsonl"), TRAFFIC)


def test_parser_takes_a_training_file_and_metadata():
    base = ["--config", "c", "--project", "p", "--bq_dataset", "d", "--registry", "r"]
    base += ["--run-id", "r1", "--trigger-id", "t1"]
    args = build_parser().parse_args(
        [*base, "--training-file", "h.jsonl", "--metadata", '{"source": "x"}']
    )
    opts = options_from_args(args)
    assert opts.training_file == "h.jsonl" and opts.metadata == {"source": "x"}
    assert options_from_args(build_parser().parse_args(base)).metadata == {}
    with pytest.raises(SystemExit):
        build_parser().parse_args([*base, "--metadata", "[1]"])


def test_the_run_record_has_every_phase_in_order(tmp_path, capsys):
    """The terminal status row carries the timeline: launch, start-up and every step."""
    import time

    from trainer import data as data_lib
    from trainer.bootstrap import RunLog

    training_file = tmp_path / "rows.jsonl"
    data_lib.write_training_file(str(training_file), training_rows(600, rate=2.0))
    received = time.time() - 0.5
    submitted = received + 0.25  # the launcher's bookkeeping took a quarter second
    log = RunLog()
    argv = [
        *_args("d", str(tmp_path / "registry"), "timed", "local-project"),
        "--training-file", str(training_file), "--rows", "600", "--epochs", "2",
        "--trigger-received-at", f"{received:.3f}", "--submitted-at", f"{submitted:.3f}",
    ]  # fmt: skip
    code = main(argv, client=log, started_at=received + 0.4)  # --submitted-at wins
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    # Two epochs: the gates may refuse it; every phase runs either way.
    assert code == 0 and summary["status"] in ("succeeded", "rejected"), summary
    final = [r for r in log.rows if r["status"] == summary["status"]][0]
    metrics = json.loads(final["metrics"])
    phases = metrics["phases"]["phases"]
    names = [p["name"] for p in phases]
    assert names == [
        "launch", "interpreter", "import", "setup", "claim", "read", "validate",
        "train", "evaluate", "publish", "gates", "promote",
    ]  # fmt: skip
    assert metrics["phases"]["origin"] == pytest.approx(submitted, abs=1e-3)
    assert phases[0]["start"] == pytest.approx(received, abs=1e-3)
    assert phases[0]["seconds"] == pytest.approx(0.25, abs=2e-3)
    for earlier, later in itertools.pairwise(phases):
        assert later["start"] >= earlier["end"] - 1e-3, (earlier, later)
    assert all(p["seconds"] >= 0 and p["end"] >= p["start"] for p in phases)
    assert phases[-1]["end"] <= time.time()
    timings = metrics["timings_s"]
    assert set(timings) == {f"{n}_s" for n in names} | {"total_s"}  # stored with sorted keys
    assert timings["total_s"] >= sum(p["seconds"] for p in phases[1:]) - 0.01
    assert summary["timings_s"] == pytest.approx(timings, abs=0.5)
    assert "[trainer] phases: launch 0.25s, interpreter " in out
    assert 1 <= metrics["epochs"] <= 200 and f"({metrics['epochs']} epochs run)" in out


def test_the_timer_origin_falls_back_to_the_given_start_then_the_process_start():
    from trainer.task import start_timer
    from trainer.timing import process_start_time

    argv = _args("d", "/tmp/r", "r", "p")
    opts = options_from_args(build_parser().parse_args([*argv, "--trigger-received-at", "100"]))
    timer = start_timer(opts, started_at=101.0, entered=101.5)
    assert timer.origin == 101.0
    assert timer.seconds() == {"launch_s": 1.0, "interpreter_s": 0.5}
    bare = start_timer(options_from_args(build_parser().parse_args(argv)), None, entered=1e10)
    assert bare.origin == process_start_time() and [p.name for p in bare.phases] == ["interpreter"]
