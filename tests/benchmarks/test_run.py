"""``python -m benchmarks.run``: part selection and failure bookkeeping."""

from __future__ import annotations

import argparse
import json

import pytest

from benchmarks import run


def test_parse_parts_keeps_the_canonical_order():
    assert run.parse_parts("trainer, live") == ["live", "trainer"]


def test_parse_parts_rejects_an_unknown_part():
    with pytest.raises(argparse.ArgumentTypeError, match="unknown part"):
        run.parse_parts("live,speed")


def test_a_failed_part_is_recorded_and_the_others_are_written(monkeypatch, tmp_path):
    def broken(args):
        raise RuntimeError("emulator did not start")

    monkeypatch.setitem(
        run.RUNNERS, "inference", lambda args: ({"inference_us_per_element": 0.7}, {})
    )
    monkeypatch.setitem(run.RUNNERS, "batch", broken)
    monkeypatch.setattr(run, "load1", lambda: 0.0)
    out = tmp_path / "results.json"

    assert run.main(["--parts", "inference,batch", "--out", str(out)]) == 0

    results = json.loads(out.read_text())
    assert results["inference_us_per_element"] == 0.7
    assert results["batch_us_per_element"] is None
    assert "emulator did not start" in results["not_measured"]["batch"]
    assert results["not_measured"]["live"] == "not run (--parts)"
    # Every key of the issue is present, measured or not.
    for key in ("live_events_per_s", "live_ratio_vs_bare_read", "freshness_s",
                "pipeline_peak_rss_mib", "trainer_rows"):  # fmt: skip
        assert key in results


def test_parts_not_run_keep_their_latest_figures_with_when_they_were_measured(
    monkeypatch, tmp_path
):
    fresh = tmp_path / "freshness.json"
    fresh.write_text(json.dumps({"freshness_s": 27.4, "at": "2026-11-26T12:00:00+00:00"}))
    monkeypatch.setattr(run, "PART_FILES", {**run.PART_FILES, "freshness": fresh,
                                            "batch": tmp_path / "absent.json"})  # fmt: skip
    monkeypatch.setitem(
        run.RUNNERS, "inference", lambda args: ({"inference_us_per_element": 0.7}, {})
    )
    monkeypatch.setattr(run, "load1", lambda: 0.0)
    out = tmp_path / "results.json"
    out.write_text(json.dumps({"live_events_per_s": 80.1, "live_ratio_vs_bare_read": 0.018,
                               "started_at": "2026-11-26T09:19:05+00:00"}))  # fmt: skip

    assert run.main(["--parts", "inference", "--out", str(out)]) == 0

    results = json.loads(out.read_text())
    assert results["freshness_s"] == 27.4
    assert results["parts_measured_at"]["freshness"] == "2026-11-26T12:00:00+00:00"
    assert results["live_events_per_s"] == 80.1
    assert results["parts_measured_at"]["live"] == "2026-11-26T09:19:05+00:00"
    assert results["batch_us_per_element"] is None
    assert results["not_measured"]["batch"] == "not run (--parts)"

    assert run.main(["--parts", "inference", "--out", str(out), "--no-carry-over"]) == 0
    assert json.loads(out.read_text())["freshness_s"] is None


def test_part_files_are_where_each_benchmark_writes_its_results():
    from benchmarks import batch_cost, freshness, inference_cost, trainer_scale

    assert run.PART_FILES == {
        "inference": inference_cost.RESULTS,
        "batch": batch_cost.RESULTS,
        "freshness": freshness.RESULTS,
        "trainer": trainer_scale.RESULTS,
    }
