"""local.memory_trace: opt-in memory sampling for local runs."""

from __future__ import annotations

import json
import time
import tracemalloc

import pytest

from local import memory_trace, pipeline
from local.accelerate_timers import TrackedStates


@pytest.fixture(autouse=True)
def _no_tracing_left():
    yield
    tracemalloc.stop()


def test_nothing_starts_without_the_variable():
    assert memory_trace.start_from_env({}) is None
    assert not tracemalloc.is_tracing()


@pytest.mark.parametrize(
    "env",
    [
        {"LOCAL_MEMORY_TRACE": "soon"},
        {"LOCAL_MEMORY_TRACE": "0"},
        {"LOCAL_MEMORY_TRACE": "5", "LOCAL_MEMORY_TRACE_FRAMES": "-1"},
    ],
)
def test_bad_settings_are_refused(env):
    with pytest.raises(ValueError, match="LOCAL_MEMORY_TRACE"):
        memory_trace.start_from_env(env)


def test_a_bad_setting_stops_the_local_pipeline_with_a_message(monkeypatch):
    import pipelines.main

    ran: list = []
    monkeypatch.setattr(pipelines.main, "run", ran.append)
    monkeypatch.setenv("LOCAL_ACCELERATE", "0")
    monkeypatch.setenv("LOCAL_MEMORY_TRACE", "-1")
    with pytest.raises(SystemExit, match="LOCAL_MEMORY_TRACE"):
        pipeline.main([])
    assert ran == []


def _retain(store: list, n: int) -> None:
    store.extend(bytearray(10_000) for _ in range(n))


def test_growth_after_the_baseline_names_the_allocation_site(tmp_path):
    tracer = memory_trace.MemoryTracer(tmp_path / "t.jsonl", interval=1, warmup=0, frames=4)
    first = tracer.sample()
    assert first["baseline"] and tracemalloc.is_tracing()
    kept: list = []
    _retain(kept, 200)  # ~2 MB allocated after the baseline and still held
    second = tracer.sample()
    top = second["top_growth"][0]
    assert top["site"].endswith(f"test_memory_trace.py:{_retain.__code__.co_firstlineno + 1}")
    assert top["size_diff_kib"] >= 1900
    assert second["traced_mib"] >= 1.9
    assert second["top_tracebacks"][0]["site"][0] == top["site"]
    summary = memory_trace.summarize([first, second])
    assert summary["traced_mib_per_min"] > 0
    assert summary["top_growth"][0]["site"] == top["site"]


def test_the_thread_appends_json_lines(tmp_path):
    path = tmp_path / "trace.jsonl"
    env = {
        "LOCAL_MEMORY_TRACE": "0.05",
        "LOCAL_MEMORY_TRACE_WARMUP": "0",
        "LOCAL_MEMORY_TRACE_FILE": str(path),
    }
    tracer = memory_trace.start_from_env(env)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            lines = path.read_text().splitlines() if path.exists() else []
            if len(lines) >= 2:
                break
            time.sleep(0.05)
    finally:
        tracer.stop()
    records = [json.loads(line) for line in lines]
    assert len(records) >= 2 and records[0]["baseline"]
    assert records[0]["rss_mib"] > 0 and records[0]["gc_objects"] > 0
    assert "traced_mib" in records[1]


def test_malloc_stats_reports_the_heap():
    stats = memory_trace.malloc_stats()
    if stats is None:
        pytest.skip("no glibc mallinfo2 here")
    assert stats["in_use_mib"] > 0


class EvaluationContext:
    """Stand-in for the DirectRunner's context (found by type name)."""

    def __init__(self, keyed_states, watermarks):
        self._transform_keyed_states = keyed_states
        self._watermark_manager = type("M", (), {"_transform_to_watermarks": watermarks})()


class _Step:
    def __init__(self, label):
        self.full_label = label


def test_runner_state_counts_what_each_stateful_step_retains():
    from apache_beam.transforms.trigger import InMemoryUnmergedState

    dedup, agg, stateless = _Step("Dedup"), _Step("Aggregate"), _Step("Parse")
    k1, k2 = InMemoryUnmergedState(), InMemoryUnmergedState()
    k1.state["w1"]["acc"] = [1, 2]
    k1.state["w2"]["acc"] = [3]
    k1.timers["w1"][("t", 0, "")] = 5
    marks = type("W", (), {})()
    marks._keyed_earliest_holds, marks._fired_timers = {"k1": 1}, set()
    aggregate_states = TrackedStates()
    aggregate_states.update({"k1": k1, "k2": k2})
    aggregate_states.timer_index.refresh(aggregate_states)
    ctx = EvaluationContext(
        {dedup: {"a": InMemoryUnmergedState()}, agg: aggregate_states, stateless: {}},
        {agg: marks},
    )
    counts, contexts = memory_trace.type_counts()
    assert ctx in contexts and counts["EvaluationContext"] >= 1
    rows = memory_trace.runner_state([ctx])
    assert [r["step"] for r in rows] == ["Aggregate", "Dedup"]
    assert rows[0] == {
        "step": "Aggregate", "keys": 2, "windows": 2, "timers": 1, "values": 3,
        "holds": 1, "fired": 0, "timer_index": 2, "timer_heap": 0,
    }  # fmt: skip
    assert rows[1]["keys"] == 1 and rows[1]["timer_index"] == 0
