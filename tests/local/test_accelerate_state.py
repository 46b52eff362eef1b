"""local.accelerate_state: identical outputs, and bounded state in the legacy runner."""

from __future__ import annotations

import threading
import uuid

import apache_beam as beam
import pytest
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms import trigger
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.window import IntervalWindow, TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp

from dataset.config import load_config
from local import accelerate as acc
from local import accelerate_state as st
from tests.local.test_accelerate import _run_graph
from transforms.aggregation import LATE_FIRING_DELAY_SECONDS, WindowAndAggregate
from transforms.ingestion import DeduplicateMessages

STATE_PATCHES = list(st.PATCHES)
T0 = 1_700_000_040.0  # a minute boundary
DEDUP_SECONDS = 60
_OUT: dict[str, list] = {}
_LOCK = threading.Lock()


pytestmark = pytest.mark.usefixtures("unpatched_runner")


def test_internals_the_patches_rely_on_are_unchanged():
    assert st.check_internals() == []
    assert "forget_empty_keys" in acc.PATCHES and "expired_window_gc" in acc.PATCHES


def test_a_changed_internal_is_reported(monkeypatch):
    from apache_beam.runners.direct.evaluation_context import EvaluationContext

    def handle_result(self, completed_bundle, completed_timers, result):
        pass  # stands in for a new Beam version's method

    monkeypatch.setattr(EvaluationContext, "handle_result", handle_result)
    assert any("handle_result" in p for p in acc.check_beam_internals())


# ----------------------------------------------------------------- pure helpers


def test_empty_state_is_one_a_fresh_state_equals():
    state = trigger.InMemoryUnmergedState()
    assert st.is_empty_state(state)
    state.state[None]["user/seen"]  # a read leaves an empty cell: still empty
    state.global_state["window_ids"] = {}
    assert st.is_empty_state(state)
    state.set_timer(None, "user/expiry", TimeDomain.REAL_TIME, Timestamp(5))
    assert not st.is_empty_state(state)
    state.clear_timer(None, "user/expiry", TimeDomain.REAL_TIME)
    assert st.is_empty_state(state)
    state.state[None]["user/seen"].append(b"\x01")
    assert not st.is_empty_state(state)


def _windowed_state():
    state = trigger.InMemoryUnmergedState()
    w1, w2, w3 = IntervalWindow(0, 60), IntervalWindow(60, 120), IntervalWindow(120, 180)
    state.global_state["window_ids"] = {w1: [1], w2: [2], w3: [3]}
    for i in (1, 2, 3):
        state.state[i]["elements"].append(i)
        state.state[i]["index"].append(1)
    return state, (w1, w2, w3)


def test_only_expired_windows_without_timers_or_holds_are_collected():
    state, (w1, w2, w3) = _windowed_state()
    state.set_timer(2, "", TimeDomain.REAL_TIME, Timestamp(500))  # a late pane is pending
    lateness = Duration(30)
    assert st.collect_expired_windows(state, lateness, Timestamp(90)) == 0  # 60 + 30 == 90
    assert st.collect_expired_windows(state, lateness, Timestamp(200)) == 1
    assert list(state.global_state["window_ids"]) == [w2, w3]
    assert 1 not in state.state and 2 in state.timers
    state.clear_timer(2, "", TimeDomain.REAL_TIME)
    state.state[3]["watermark"].append(Timestamp(150))  # a hold: kept
    # A firing still to be delivered (Beam may deliver a due timer twice): kept.
    assert st.collect_expired_windows(state, lateness, Timestamp(1000), {2}) == 0
    assert st.collect_expired_windows(state, lateness, Timestamp(1000)) == 1
    assert list(state.global_state["window_ids"]) == [w3]


# ----------------------------------------------------------------- pipelines


class _Collect(beam.DoFn):
    def __init__(self, run_id: str):
        self._run_id = run_id

    def process(self, element, ts=beam.DoFn.TimestampParam, pane=beam.DoFn.PaneInfoParam):
        if isinstance(element, PubsubMessage):
            element = ("msg", element.attributes["message_id"])
        else:
            element = {k: v for k, v in element.items() if k != "computed_at"}
            element = ("agg", sorted(element.items(), key=lambda kv: kv[0]))
        with _LOCK:
            _OUT.setdefault(self._run_id, []).append(
                (repr(element), float(ts), pane.timing, pane.index)
            )


def _message(i: int) -> TimestampedValue:
    return TimestampedValue(PubsubMessage(b"{}", {"message_id": f"m{i}"}), T0)


def _dedup_stream(ids: int) -> TestStream:
    stream = TestStream().advance_watermark_to(T0)
    for start in range(0, ids, 50):
        batch = [_message(i) for i in range(start, min(ids, start + 50))]
        stream = stream.add_elements(batch).advance_processing_time(0.01)
    return (
        stream.add_elements([_message(i) for i in range(0, ids, 7)])  # duplicates: dropped
        .advance_processing_time(DEDUP_SECONDS + 1)  # every id expires
        .add_elements([_message(i) for i in range(0, ids, 5)])  # seen again: pass
        .advance_processing_time(DEDUP_SECONDS + 1)
        .advance_watermark_to_infinity()
    )


def _record(key: str, t: float, v: float) -> dict:
    return {
        "kind": "features",
        "message_id": f"{key}@{t}",
        "key": key,
        "event_time": t,
        "features": {
            "vehicle_count": v,
            "mean_speed_kmh": 40.0 + v,
            "occupancy": 0.1,
            "hour_of_day": 8.0,
            "road_type": "local",
        },
        "label": int(v) % 2,
        "join_id": None,
    }


def _aggregate_stream(keys: int, minutes: int, gone: int = 0) -> TestStream:
    """``keys`` keys every minute; ``gone`` more keys only in the first two minutes."""
    stream = TestStream().advance_processing_time(T0 + 3600).advance_watermark_to(T0)
    for m in range(minutes):
        t = T0 + m * 60
        batch = [
            TimestampedValue(_record(f"k{k}", t + k, float(m + k)), t + k) for k in range(keys)
        ]
        if m < 2:
            batch += [TimestampedValue(_record(f"gone{g}", t + g, 1.0), t + g) for g in range(gone)]
        if m >= 2:  # late, within lateness; and too late (dropped by Beam)
            batch.append(TimestampedValue(_record("k0", t - 90, 1.0), t - 90))
            batch.append(TimestampedValue(_record("k1", t - 900, 1.0), t - 900))
        stream = stream.add_elements(batch).advance_watermark_to(t + 60)
        if m == 8:
            # Late data for windows about to expire; they expire (and the key is
            # processed again) while their LATE panes are still pending.
            stream = (
                stream.add_elements(
                    [TimestampedValue(_record("k2", t - s, 2.0), t - s) for s in (100, 280)]
                )
                .advance_watermark_to(t + 65)
                .add_elements([TimestampedValue(_record("k2", t + 65, 3.0), t + 65)])
            )
        stream = stream.advance_processing_time(LATE_FIRING_DELAY_SECONDS + 1)
    return stream.advance_watermark_to_infinity()


def _run(graph: str, size: int, patches: list[str] | None, gone: int = 0) -> tuple[list, dict]:
    """Runs a graph (stock when ``patches`` is None); outputs and runner retention."""
    run_id = uuid.uuid4().hex
    if patches is not None:
        acc.accelerate(patches=patches)
    try:
        options = PipelineOptions([], runner="BundleBasedDirectRunner")
        options.view_as(StandardOptions).streaming = True
        p = beam.Pipeline(options=options)
        if graph == "dedup":
            out = (
                p
                | "Events" >> _dedup_stream(size)
                | "Dedup" >> DeduplicateMessages("message_id", DEDUP_SECONDS, clock=lambda: 0.0)
            )
        else:
            config = load_config("configs/traffic.yaml")
            out = (
                p
                | "Events" >> _aggregate_stream(5, size, gone)
                | "Aggregate" >> WindowAndAggregate(config)
            )
        _ = out | "Collect" >> beam.ParDo(_Collect(run_id))
        result = p.run()
        result.wait_until_finish()
        retained = {}
        for applied, states in result._evaluation_context._transform_keyed_states.items():
            windows = sum(len(s.global_state.get("window_ids", {})) for s in states.values())
            retained[applied.full_label] = (len(states), windows)
    finally:
        acc.restore()
    with _LOCK:
        return sorted(_OUT.pop(run_id, [])), retained


def test_dedup_output_is_identical_and_expired_ids_are_forgotten():
    ids = 400
    stock, stock_held = _run("dedup", ids, None)
    fast, fast_held = _run("dedup", ids, STATE_PATCHES)
    everything, _ = _run("dedup", ids, list(acc.PATCHES))
    assert len(stock) == ids + len(range(0, ids, 5))  # duplicates dropped, expired pass
    assert fast == stock and everything == stock
    assert stock_held["Dedup/DropDuplicates"][0] == ids  # Beam keeps every id
    assert fast_held.get("Dedup/DropDuplicates", (0, 0))[0] <= 1  # O(1), not O(ids)


def test_aggregate_output_is_identical_and_expired_windows_are_collected():
    minutes = 16
    stock, stock_held = _run("aggregate", minutes, None)
    fast, fast_held = _run("aggregate", minutes, STATE_PATCHES)
    assert any("'LATE'" in row[0] for row in stock)
    assert fast == stock
    steps = [s for s in stock_held if s.endswith("GroupByWindow")]
    assert len(steps) == 3
    for step in steps:
        assert stock_held[step][1] >= 5 * minutes  # one window id per key and minute, or more
        # What can still take late data: lateness + size, over the period, per key.
        assert fast_held.get(step, (0, 0))[1] <= 5 * 8, step


def test_keys_that_never_come_back_are_swept(monkeypatch):
    """A key seen only early (a retired model version) keeps its expired windows
    unless swept; the sweep drops them and the key, with outputs unchanged."""
    monkeypatch.setattr(st, "SWEEP_INTERVAL_SECONDS", 0.0)
    minutes, gone = 14, 6
    stock, _ = _run("aggregate", minutes, None, gone)
    unswept, unswept_held = _run(
        "aggregate", minutes, ["forget_empty_keys", "expired_window_gc"], gone
    )
    swept, swept_held = _run("aggregate", minutes, STATE_PATCHES, gone)
    assert any("gone0" in row[0] for row in stock)
    assert unswept == stock and swept == stock
    steps = [s for s in unswept_held if s.endswith("GroupByWindow")]
    assert len(steps) == 3
    for step in steps:
        assert unswept_held[step][0] == 5 + gone, step  # the gone keys are still held
        assert swept_held.get(step, (0, 0))[0] <= 5, step


def test_a_set_state_stores_a_repeated_add_once_and_reads_as_beams():
    has_timer = trigger.AfterProcessingTime.STATE_TAG
    user_set = trigger._SetStateTag("user/seen")
    other = trigger._SetStateTag("user/tuples")

    def fill(state):
        for _ in range(100):  # one add per element of a pane, as AfterProcessingTime does
            state.add_state("w", has_timer, True)
        for value in (b"a", b"b", b"a", b"a"):  # encoded user values
            state.add_state("w", user_set, value)
        for value in ((1,), (1,)):  # not a plain value: stored as Beam stores it
            state.add_state("w", other, value)
        return state

    beams = fill(trigger.InMemoryUnmergedState())
    acc.accelerate(patches=["set_state_once"])
    ours = fill(trigger.InMemoryUnmergedState())
    assert ours.state["w"][has_timer.tag] == [True]  # not 100 copies
    assert ours.state["w"][user_set.tag] == [b"a", b"b", b"a"]
    assert ours.state["w"][other.tag] == [(1,), (1,)]
    for tag in (has_timer, user_set, other):
        merged_ours = trigger.MergeableStateAdapter(ours)
        merged_beams = trigger.MergeableStateAdapter(beams)
        merged_ours.window_ids = merged_beams.window_ids = {"w": ["w"]}
        assert merged_ours.get_state("w", tag) == merged_beams.get_state("w", tag)
        assert bool(ours.get_state("w", tag)) == bool(beams.get_state("w", tag))
    ours.clear_state("w", has_timer)  # a fired pane resets it: the next add is stored
    ours.add_state("w", has_timer, True)
    assert ours.get_state("w", has_timer) == [True]


def test_the_identical_output_graph_of_test_accelerate_is_unchanged():
    stock = _run_graph(uuid.uuid4().hex)
    with acc.accelerated(patches=STATE_PATCHES):
        fast = _run_graph(uuid.uuid4().hex)
    assert fast == stock


def test_restore_undoes_the_state_patches():
    from apache_beam.runners.direct import transform_evaluator as te
    from apache_beam.runners.direct.evaluation_context import EvaluationContext

    before = (
        EvaluationContext.handle_result,
        te._StreamingGroupAlsoByWindowEvaluator.process_element,
    )
    acc.accelerate(patches=STATE_PATCHES)
    assert EvaluationContext.handle_result is not before[0]
    acc.restore()
    after = (
        EvaluationContext.handle_result,
        te._StreamingGroupAlsoByWindowEvaluator.process_element,
    )
    assert after == before
