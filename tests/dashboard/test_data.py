"""The dashboard's data functions and page, without BigQuery (fakes) or a browser."""

from __future__ import annotations

import datetime as dt
import json
import re

from dashboard import data, render
from tests.helpers import ADS, TRAFFIC
from trainer.trigger_messages import parse_trigger


def test_dead_letter_reason_blanks_values_so_one_problem_is_one_reason():
    a = data.dead_letter_reason("feature 'speed': expected float, got str 'x'")
    b = data.dead_letter_reason("feature 'occupancy': expected float, got str 'abc'")
    assert a == b == "feature …: expected float, got str …"
    assert data.dead_letter_reason("missing features ['a', 'b']\ntrace") == "missing features …"
    assert data.dead_letter_reason(None) == "(no message)"
    assert len(data.dead_letter_reason("x" * 500)) == data.REASON_CHARS


def test_count_by_reason_sums_messages_per_step_and_reason_largest_first():
    grouped = [
        {"step": "ParseAndValidate", "message": "feature 'a' is null", "n": 2},
        {"step": "ParseAndValidate", "message": "feature 'b' is null", "n": 3},
        {"step": "JoinLabels", "message": "feature 'a' is null", "n": 4},
        {"step": None, "message": "payload is not valid JSON: x", "n": 1},
    ]
    assert data.count_by_reason(grouped) == [
        {"step": "ParseAndValidate", "reason": "feature … is null", "count": 5},
        {"step": "JoinLabels", "reason": "feature … is null", "count": 4},
        {"step": "(none)", "reason": "payload is not valid JSON: x", "count": 1},
    ]


def test_series_by_version_sorts_points_and_skips_missing_values():
    t = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    rows = [
        {
            "window_end": t + dt.timedelta(minutes=2),
            "model_version": "v2",
            "examples": 5,
            "value": 0.8,
        },
        {
            "window_end": t + dt.timedelta(minutes=1),
            "model_version": "v2",
            "examples": 5,
            "value": 0.9,
        },
        {"window_end": t, "model_version": "v1", "examples": 0, "value": None},
        {"window_end": t, "model_version": "v1", "examples": 7, "value": 0.7},
    ]
    series = data.series_by_version(rows)
    assert [p["value"] for p in series["v2"]] == [0.9, 0.8]
    assert series["v1"] == [{"t": t.timestamp(), "value": 0.7, "examples": 7}]


def test_quality_metric_follows_the_task():
    assert data.quality_metric(TRAFFIC) == "accuracy"
    assert data.quality_metric(ADS) == "accuracy"


def test_model_versions_newest_first_with_current_metrics_and_gate_decisions(registry):
    reg, versions = registry
    models = data.model_versions(reg)
    assert models["current"] == versions[-1]
    assert [v["version"] for v in models["versions"]] == versions[::-1]
    newest = models["versions"][0]
    assert newest["current"] and newest["status"] == "promoted"
    assert newest["metrics"]["accuracy"] == 0.91
    assert newest["reasons"] == ["quality: accuracy 0.91 >= floor 0.8"]
    assert data.rollback_targets(models["versions"]) == [versions[0]]
    assert models["history"][0]["version"] == versions[-1]


def test_chart_has_one_line_per_version_and_no_external_assets():
    series = {
        "v1": [{"t": 0.0, "value": 0.8}, {"t": 60.0, "value": 0.85}],
        "v2": [{"t": 60.0, "value": 0.9}, {"t": 120.0, "value": 0.7}],
    }
    svg = render.line_chart_svg(series, title="accuracy")
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert len(re.findall(r"<polyline", svg)) == 2
    assert 'data-version="v2"' in svg
    # v2's 0.7 is the lowest value: the bottom edge of the plot.
    points = re.search(r'data-version="v2"[^>]*points="([^"]+)"', svg).group(1).split()
    assert float(points[1].split(",")[1]) == 20 + 260 - 20 - 30
    assert "no data yet" in render.line_chart_svg({}, title="x")


def test_page_escapes_values_and_has_the_buttons(registry):
    reg, versions = registry
    state = {
        "dataset": "traffic",
        "quality_metric": "accuracy",
        "models": data.model_versions(reg),
        "runs": [{"run_id": "run-<script>", "status": "queued", "recorded_at": "t"}],
        "quality": {"v1": [{"t": 0.0, "value": 0.5}, {"t": 1.0, "value": 0.6}]},
        "errors": {"counts": "boom"},
    }
    html = render.page(state, targets=[versions[0]], message="hi & bye")
    assert "run-&lt;script&gt;" in html and "<script>" not in html
    assert 'id="retrain-button"' in html and 'id="rollback-button"' in html
    assert f'name="if_current" value="{versions[-1]}"' in html
    assert "hi &amp; bye" in html and "could not read: boom" in html
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")


class _FakeBigQuery:
    def __init__(self):
        self.inserted = []

    def insert_rows_json(self, table, rows, **kwargs):
        self.inserted.append((table, rows))
        return []


class _FakePublisher:
    def __init__(self):
        self.messages = []

    def publish(self, topic, data, **attributes):
        self.messages.append((topic, data, attributes))

        class _Done:
            def result(self, timeout=None):
                return "1"

        return _Done()


def _client_app(registry_root):
    from fastapi.testclient import TestClient

    from dashboard.app import Dashboard, create_app
    from model.registry import ModelRegistry

    bq, publisher = _FakeBigQuery(), _FakePublisher()
    source = data.Source(bq, "proj", "ds", TRAFFIC)
    dash = Dashboard(source, ModelRegistry(str(registry_root)), "projects/proj/topics/t", publisher)
    return TestClient(create_app(dash)), bq, publisher


def test_retrain_publishes_the_pipelines_trigger_message_with_reason_manual(tmp_path):
    client, bq, publisher = _client_app(tmp_path / "registry")
    response = client.post("/retrain", follow_redirects=False)
    assert response.status_code == 303 and "retrain+requested" in response.headers["location"]
    ((topic, body, attributes),) = publisher.messages
    assert topic == "projects/proj/topics/t"
    trigger = parse_trigger(body, attributes, "traffic")  # what the launcher does
    assert trigger.reason == "manual" and trigger.trigger_id.startswith("traffic-manual-")
    ((table, rows),) = bq.inserted
    assert table == "proj.ds.retrain_triggers" and rows[0]["trigger_id"] == trigger.trigger_id
    assert set(json.loads(body)) == set(rows[0]) | {
        "total_examples",
        "event_time_start",
        "event_time_end",
        "new_examples",
    }


def test_rollback_is_pinned_to_the_version_the_page_showed(registry, tmp_path):
    reg, versions = registry
    client, _, _ = _client_app(reg.root)
    stale = client.post(
        "/rollback",
        data={"to_version": versions[0], "if_current": "v20200101T000000Z-abcdef"},
        follow_redirects=False,
    )
    assert "rollback+not+done" in stale.headers["location"]
    assert reg.current_version() == versions[-1]
    done = client.post(
        "/rollback",
        data={"to_version": versions[0], "if_current": versions[-1]},
        follow_redirects=False,
    )
    assert "rolled+back" in done.headers["location"]
    assert reg.current_version() == versions[0]
    assert reg.get(versions[-1]).status == "rolled-back"


def test_cross_origin_posts_are_refused(registry):
    reg, versions = registry
    client, _, publisher = _client_app(reg.root)
    response = client.post("/retrain", headers={"origin": "http://evil.example"})
    assert response.status_code == 403 and not publisher.messages


def test_statistics_table_summarises_numeric_and_categorical_columns():
    stats = {
        "rows": 10,
        "features": {
            "speed": {
                "kind": "numeric",
                "count": 9,
                "missing": 1,
                "mean": 50.0,
                "std": 2.0,
                "min": 40.0,
                "max": 60.0,
            },
            "road": {
                "kind": "categorical",
                "count": 10,
                "missing": 0,
                "frequencies": {"highway": 0.7, "local": 0.3},
            },
        },
        "label": {"kind": "categorical", "count": 10, "missing": 0, "frequencies": {"1": 0.2}},
    }
    html = render.statistics_table(stats)
    assert "(10 rows)" in html
    assert "mean=50 std=2 min=40 max=60" in html and "highway:0.7 local:0.3" in html
    assert "(label)" in html
    assert render.statistics_table(None) == ""
