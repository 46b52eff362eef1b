"""Tests of the rollback monitor (trainer/rollback_monitor.py).

The decision (``should_roll_back``, ``summarize_quality``) is pure. The monitor
itself runs against the BigQuery emulator and a real local-directory
``ModelRegistry`` holding two constant Keras models: one that always says
"congested", one that never does. Quality windows and labeled rows are written
relative to now, inside the queries' partition lookback.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import pytest

from dataset.config import RetrainingPolicy
from tests.trainer.control_helpers import TRAFFIC
from trainer import rollback_monitor as M
from trainer import runs

# ----------------------------------------------------------------- the decision (pure)

POLICY = RetrainingPolicy(quality_min_examples=100, rollback_margin=0.05)


def _q(examples, accuracy=None, rmse=None):
    return {"examples": examples, "accuracy": accuracy, "rmse": rmse}


@pytest.mark.parametrize(
    "current, previous, expected, reason_part",
    [
        (_q(500, accuracy=0.80), _q(1000, accuracy=0.90), True, "drop +0.1000"),
        (_q(500, accuracy=0.86), _q(1000, accuracy=0.90), False, "drop +0.0400"),
        (_q(500, accuracy=0.85), _q(1000, accuracy=0.90), False, "margin 0.0500"),  # == margin
        (_q(500, accuracy=0.95), _q(1000, accuracy=0.90), False, "drop -0.0500"),
        (_q(99, accuracy=0.10), _q(1000, accuracy=0.90), False, "current version has 99"),
        (_q(500, accuracy=0.10), _q(50, accuracy=0.90), False, "previous version has 50"),
        (None, _q(1000, accuracy=0.90), False, "current version has 0"),
        (_q(500, accuracy=0.80), None, False, "previous version has 0"),
        (_q(500), _q(1000, accuracy=0.9), False, "no accuracy"),
    ],
)
def test_should_roll_back_classification(current, previous, expected, reason_part):
    decision, reason = M.should_roll_back(current, previous, POLICY, "binary_classification")
    assert decision is expected
    assert reason_part in reason


@pytest.mark.parametrize(
    "cur_rmse, expected",
    [(10.6, True), (10.4, False), (9.0, False)],  # previous 10.0, margin 5% relative
)
def test_should_roll_back_regression_relative_margin(cur_rmse, expected):
    decision, reason = M.should_roll_back(
        _q(500, rmse=cur_rmse), _q(500, rmse=10.0), POLICY, "regression"
    )
    assert decision is expected, reason
    assert "rmse" in reason


def test_summarize_quality_latest_pane_since_and_last_windows():
    def row(start, computed, examples, accuracy, rmse=None):
        return {
            "window_start": f"2026-01-01T00:{start:02d}:00Z",
            "window_end": f"2026-01-01T00:{start + 1:02d}:00Z",
            "examples": examples,
            "accuracy": accuracy,
            "rmse": rmse,
            "computed_at": f"2026-01-01T01:00:{computed:02d}Z",
        }

    rows = [
        row(0, 1, 10, 0.0),  # early pane of window 0 ...
        row(0, 5, 100, 0.5),  # ... superseded by its on-time pane (accumulating)
        row(1, 6, 300, 1.0),
        row(2, 7, 100, 0.9),
    ]
    all_q = M.summarize_quality(rows)
    assert all_q["windows"] == 3 and all_q["examples"] == 500
    assert all_q["accuracy"] == pytest.approx((50 + 300 + 90) / 500)
    since_q = M.summarize_quality(rows, since="2026-01-01T01:00:06Z")
    assert since_q["examples"] == 400
    last_q = M.summarize_quality(rows, last_windows=1)
    assert last_q["examples"] == 100 and last_q["accuracy"] == pytest.approx(0.9)
    assert M.summarize_quality([]) == {
        "examples": 0,
        "windows": 0,
        "accuracy": None,
        "log_loss": None,
        "mae": None,
        "rmse": None,
    }
    pooled = M.summarize_quality([row(0, 1, 1, None, 3.0), row(1, 1, 3, None, 1.0)])
    assert pooled["rmse"] == pytest.approx(((9 + 3) / 4) ** 0.5)


# ----------------------------------------------------------------- the monitor (emulator)


def test_a_first_version_is_not_judged(tmp_path):
    from model.registry import ModelRegistry
    from tests.transforms.test_inference import constant_model

    registry = ModelRegistry(str(tmp_path / "registry"))
    monitor = M.RollbackMonitor(TRAFFIC, registry, None, "p", "d")  # no query is made
    assert monitor.check_once() is False  # nothing promoted yet
    v1 = registry.publish(constant_model(0.0), {"dataset": "traffic"}, status="passed")
    registry.promote(v1)
    assert monitor.check_once() is False
    assert monitor.stats["monitor"]["note"] == "no previous version to compare with"
    assert monitor.stats["current_version"] == v1


SAYS_YES, SAYS_NO = 5.0, -5.0  # logits of constant models: "congested" / "not congested"


def _quality(version, start, examples, accuracy, computed):
    return {
        "window_start": start,
        "window_end": start + dt.timedelta(minutes=1),
        "model_version": version,
        "examples": examples,
        "accuracy": accuracy,
        "computed_at": computed,
    }


@pytest.fixture
def judged(bigquery_client, gcp_project, unique_name, tmp_path):
    """v1 then v2 promoted in a real registry; the state a monitor judges, built by ``make``.

    ``make(v1_online, v2_online, v1_logit, v2_logit)``: quality windows of v1
    (before v2's promotion) and of v2 (after it) at those accuracies, and 80
    labeled rows ("congested") since v2's promotion, on which the v1/v2 models
    are right or wrong by their logits. Returns (monitor, registry, v1, v2).
    """
    from dataset.resources import ensure_bigquery_tables
    from dataset.tables import QUALITY_SCHEMA, training_schema
    from model.registry import ModelRegistry
    from tests.helpers import traffic_payload
    from tests.transforms.test_inference import constant_model
    from transforms.labeling import training_row
    from transforms.validation import validate_payload

    ensure_bigquery_tables(gcp_project, unique_name, TRAFFIC, client=bigquery_client)

    def make(v1_online, v2_online, v1_logit, v2_logit):
        registry = ModelRegistry(str(tmp_path / "registry"))
        v1 = registry.publish(constant_model(v1_logit), {"dataset": "traffic"}, status="passed")
        registry.promote(v1, reason="first")
        meta = {
            "dataset": "traffic",
            "run_id": "run-traffic-000003",
            "trigger_id": "traffic-000003",
        }
        v2 = registry.publish(constant_model(v2_logit), meta, status="passed")
        registry.promote(v2, reason="run run-traffic-000003")
        promoted = dt.datetime.fromisoformat(
            registry.get(v2).metadata["promoted_at"].replace("Z", "+00:00")
        )
        before = promoted - dt.timedelta(hours=1)
        after = promoted + dt.timedelta(minutes=1)
        quality = [
            *[
                _quality(v1, before + dt.timedelta(minutes=m), 200, v1_online, before)
                for m in range(5)
            ],
            _quality(v2, promoted, 40, 0.2, after - dt.timedelta(seconds=30)),  # early pane...
            _quality(v2, promoted, 150, v2_online, after),  # ...superseded
            _quality(v2, promoted + dt.timedelta(minutes=1), 150, v2_online, after),
        ]
        runs.insert_typed_rows(
            bigquery_client,
            M.quality_table(gcp_project, unique_name, TRAFFIC),
            quality,
            QUALITY_SCHEMA,
        )
        t0 = promoted.timestamp() + 5
        labeled = [
            training_row(
                TRAFFIC,
                validate_payload(traffic_payload(f"S{i}", t0 + i, congested=1), TRAFFIC, f"r{i}"),
                1,
                t0 + i,
                "inline",
            )
            for i in range(80)
        ]
        runs.insert_typed_rows(
            bigquery_client,
            f"{gcp_project}.{unique_name}.{TRAFFIC.tables.training_examples}",
            labeled,
            training_schema(TRAFFIC),
        )
        runs.record_run_status(
            bigquery_client,
            runs.runs_table(gcp_project, unique_name, TRAFFIC),
            {
                "run_id": "run-traffic-000003",
                "trigger_id": "traffic-000003",
                "dataset": "traffic",
                "status": "succeeded",
                "model_version": v2,
                "promoted": True,
            },
        )
        monitor = M.RollbackMonitor(TRAFFIC, registry, bigquery_client, gcp_project, unique_name)
        return monitor, registry, v1, v2

    yield make
    bigquery_client.delete_dataset(unique_name, delete_contents=True, not_found_ok=True)


@pytest.mark.emulators
def test_monitor_rolls_back_a_worse_version(judged, bigquery_client, gcp_project, unique_name):
    # v2 is worse online (0.7 vs 0.9) and on the same 80 recent rows (v1 right, v2 wrong).
    monitor, registry, v1, v2 = judged(0.9, 0.7, SAYS_YES, SAYS_NO)
    assert monitor.check_once() is True
    assert registry.current_version() == v1
    assert registry.get(v2).status == "rolled-back"
    last = registry.history()[-1]
    assert (last["action"], last["version"], last["previous"]) == ("rollback", v1, v2)
    assert "online accuracy 0.7000 (300 examples)" in last["reason"]
    assert (
        "on the same 80 recent labeled rows: accuracy 0.0000 vs previous 1.0000" in (last["reason"])
    )
    assert monitor.stats["rollbacks"] == 1 and monitor.stats["last_rollback"]["from"] == v2
    history = runs.run_history(
        bigquery_client, gcp_project, unique_name, TRAFFIC, "run-traffic-000003"
    )
    assert [(r["status"], r["seq"]) for r in history] == [("succeeded", 1), ("rolled_back", 2)]
    # Now current by a rollback: not judged again (no flip-flop).
    assert monitor.check_once() is False and registry.current_version() == v1


@pytest.mark.emulators
def test_monitor_keeps_a_version_whose_online_drop_is_drift(judged):
    # Online, v2 looks worse; on the same recent rows it is the better model: keep it.
    monitor, registry, v1, v2 = judged(0.9, 0.5, SAYS_NO, SAYS_YES)
    assert monitor.check_once() is False
    assert registry.current_version() == v2
    assert "not confirmed offline" in monitor.stats["monitor"]["note"]


@pytest.mark.emulators
def test_monitor_keeps_a_version_within_the_margin(judged):
    monitor, registry, v1, v2 = judged(0.9, 0.7, SAYS_YES, SAYS_NO)
    monitor.config = dataclasses.replace(
        TRAFFIC, retraining=dataclasses.replace(TRAFFIC.retraining, rollback_margin=0.25)
    )
    assert monitor.check_once() is False
    assert registry.current_version() == v2 and monitor.stats["rollbacks"] == 0


@pytest.mark.emulators
def test_monitor_never_rolls_back_a_version_it_did_not_judge(judged):
    """The trainer promotes v3 while the monitor judges v2: v3 stays (compare-and-swap)."""
    from tests.transforms.test_inference import constant_model

    monitor, registry, v1, v2 = judged(0.9, 0.7, SAYS_YES, SAYS_NO)
    v3 = registry.publish(constant_model(SAYS_YES), {"dataset": "traffic"}, status="passed")
    load = registry.load_keras
    promoted = []

    def load_while_v3_is_promoted(version):  # the monitor's offline check, mid-judgement
        if not promoted:
            registry.promote(v3, reason="run run-traffic-000004")
            promoted.append(v3)
        return load(version)

    registry.load_keras = load_while_v3_is_promoted
    assert monitor.check_once() is False
    assert registry.current_version() == v3
    assert registry.get(v3).status == "promoted"
    assert monitor.stats["rollbacks"] == 0 and monitor.stats["rollbacks_skipped"] == 1
    assert "CURRENT changed" in monitor.stats["monitor"]["note"]


def test_the_launcher_runs_the_monitor_and_reports_its_counts(tmp_path):
    from trainer.backends.base import JobArgs
    from trainer.backends.local import LocalProcessBackend
    from trainer.launcher import Launcher

    class Monitor:
        stats = {"rollbacks": 2, "rollbacks_skipped": 1, "errors": 3, "current_version": "v9"}

        def check_once(self):
            return True

    backend = LocalProcessBackend(JobArgs("c.yaml", "p", "d", str(tmp_path)), tmp_path)
    args = (TRAFFIC, "p", "projects/p/subscriptions/s", "d", backend, None)
    launcher = Launcher(*args, monitor=Monitor(), state_dir=tmp_path)
    launcher.stats["errors"] = 1
    assert launcher.monitor_once() is True
    snapshot = launcher.snapshot()
    assert snapshot["rollbacks"] == 2 and snapshot["rollbacks_skipped"] == 1
    assert snapshot["current_version"] == "v9" and snapshot["errors"] == 4
    quiet = Launcher(*args, state_dir=tmp_path)  # --no-monitor
    assert quiet.monitor_once() is False
    assert quiet.snapshot()["rollbacks"] == 0 and quiet.snapshot()["current_version"] is None


@pytest.mark.emulators
def test_monitor_cli_runs_for_a_duration_and_prints_its_stats(
    bigquery_emulator, gcp_project, tmp_path, capsys
):
    args = ["--project", gcp_project, "--config", "configs/traffic.yaml", "--bq_dataset", "d"]
    args += ["--registry", str(tmp_path / "registry"), "--monitor-seconds", "0.2"]
    stats_file = tmp_path / "monitor.json"
    assert M.main([*args, "--duration", "0.5", "--stats-file", str(stats_file)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(printed)["rollbacks"] == 0 and json.loads(printed)["errors"] == 0
    assert json.loads(stats_file.read_text())["current_version"] is None  # nothing promoted
    assert M.main([*args, "--lookback-days", "0"]) == 2


def test_summarize_quality_latest_pane_is_the_highest_pane_index():
    """Panes are numbered by the stream; computed_at (a worker's clock) may disagree."""

    def row(pane, computed, examples, accuracy):
        return {
            "window_start": "2026-01-01T00:00:00Z",
            "window_end": "2026-01-01T00:01:00Z",
            "examples": examples,
            "accuracy": accuracy,
            "pane_index": pane,
            "computed_at": f"2026-01-01T01:00:{computed:02d}Z",
        }

    q = M.summarize_quality([row(0, 9, 100, 0.5), row(1, 3, 150, 0.6), row(None, 30, 1, 0.0)])
    assert q["windows"] == 1 and q["examples"] == 150 and q["accuracy"] == pytest.approx(0.6)
