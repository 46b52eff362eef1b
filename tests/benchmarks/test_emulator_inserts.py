"""benchmarks.emulator_inserts: measures what it names, and leaves the environment as it was."""

from __future__ import annotations

import os

import pytest

from benchmarks import emulator_inserts


def test_too_few_requests_is_a_clear_error():
    with pytest.raises(ValueError, match="--requests"):
        emulator_inserts.measure(requests=3, rows=5, time_travel=False)


@pytest.mark.emulators
def test_a_small_run_reports_each_quarter_and_restores_the_environment(monkeypatch):
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", "http://127.0.0.1:1")  # a caller's setting
    before = dict(os.environ)
    result = emulator_inserts.measure(requests=8, rows=2, time_travel=False, log=lambda _: None)
    assert [q["requests"] for q in result["quarters"]] == [2, 4, 6, 8]
    assert [q["rows"] for q in result["quarters"]] == [4, 8, 12, 16]
    assert all(q["rss_mib"] > 0 and q["wall_ms_per_request"] > 0 for q in result["quarters"])
    assert result["variant"] == "local"
    assert dict(os.environ) == before
