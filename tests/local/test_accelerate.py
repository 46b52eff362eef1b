"""local.accelerate: the Beam internals it patches, and identical results with it."""

from __future__ import annotations

import sys
import threading
import time
import uuid

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms import trigger, window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (
    CombiningValueStateSpec,
    ReadModifyWriteStateSpec,
    TimerSpec,
    on_timer,
)
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import PaneInfoTiming

from local import accelerate as acc

_COLLECTED: dict[str, list] = {}
_LOCK = threading.Lock()


pytestmark = pytest.mark.usefixtures("unpatched_runner")


def test_beam_internals_are_the_ones_the_patches_were_written_for():
    assert acc.check_beam_internals() == []


def test_a_changed_internal_is_reported(monkeypatch):
    from apache_beam.io.gcp import bigquery

    monkeypatch.delattr(bigquery, "ReshufflePerKey")
    assert any("ReshufflePerKey" in p for p in acc.check_beam_internals())
    with pytest.raises(RuntimeError, match="Beam internals changed"):
        acc.accelerate()


def test_a_changed_beam_method_that_is_copied_here_is_reported(monkeypatch):
    from apache_beam.runners.direct import transform_evaluator as te

    def start_bundle(self):  # stands in for a new Beam version's method
        pass

    monkeypatch.setattr(te._ParDoEvaluator, "start_bundle", start_bundle)
    assert any("source hash" in p for p in acc.check_beam_internals())


def test_a_changed_or_missing_executor_method_the_sink_thread_wraps_is_reported(monkeypatch):
    from apache_beam.runners.direct import executor as ex

    monitor = ex._ExecutorServiceParallelExecutor._MonitorTask

    def _is_executing(self):
        return False  # stands in for a new Beam version's method

    monkeypatch.setattr(monitor, "_is_executing", _is_executing)
    monkeypatch.delattr(monitor, "_add_work_if_necessary")
    problems = acc.check_beam_internals()
    assert "_ExecutorServiceParallelExecutor._MonitorTask._add_work_if_necessary is gone" in (
        problems
    )
    assert any("_MonitorTask._is_executing changed (source hash)" in p for p in problems)


def test_accelerate_is_idempotent_and_restore_undoes_every_patch():
    from apache_beam.io.gcp import bigquery
    from apache_beam.runners.direct import executor as ex
    from apache_beam.runners.direct import transform_evaluator as te
    from apache_beam.runners.direct import watermark_manager as wm
    from apache_beam.runners.direct.evaluation_context import EvaluationContext
    from apache_beam.transforms import core, userstate

    before = {
        "overrides": te.TransformEvaluatorRegistry._test_evaluators_overrides,
        "specs": userstate.get_dofn_specs,
        "te_stateful": te.is_stateful_dofn,
        "size": bigquery.BigQueryWriteFn._check_row_size,
        "start": bigquery.BigQueryWriteFn.start_bundle,
        "timers": wm._TransformWatermarks.extract_transform_timers,
        "reshuffle": bigquery.ReshufflePerKey,
        "copy": trigger.InMemoryUnmergedState.copy,
        "no_extraction": trigger._CombiningValueStateTag.without_extraction,
        "prefix": trigger._CombiningValueStateTag.with_prefix,
        "list_prefix": trigger._ListStateTag.with_prefix,
        "set_add": trigger.InMemoryUnmergedState.add_state,
        "arguments": core.get_function_arguments,
        "keyed_states": EvaluationContext._initialize_keyed_states,
        "schedule": ex._ExecutorServiceParallelExecutor.schedule_consumption,
        "await": ex._ExecutorServiceParallelExecutor.await_completion,
        "switch_interval": sys.getswitchinterval(),
    }
    assert acc.accelerate(pull_size=200) == sorted(acc.PATCHES)
    patched_specs = userstate.get_dofn_specs
    assert acc.accelerate(pull_size=300) == sorted(acc.PATCHES)
    assert userstate.get_dofn_specs is patched_specs  # not wrapped twice
    assert te.get_dofn_specs is patched_specs
    overrides = te.TransformEvaluatorRegistry._test_evaluators_overrides
    from apache_beam.runners.direct.direct_runner import _DirectReadFromPubSub

    assert issubclass(overrides[_DirectReadFromPubSub], te._PubSubReadEvaluator)
    assert issubclass(overrides[beam.ParDo], te._ParDoEvaluator)
    assert acc._pull_size == 300
    acc.restore()
    after = {
        "overrides": te.TransformEvaluatorRegistry._test_evaluators_overrides,
        "specs": userstate.get_dofn_specs,
        "te_stateful": te.is_stateful_dofn,
        "size": bigquery.BigQueryWriteFn._check_row_size,
        "start": bigquery.BigQueryWriteFn.start_bundle,
        "timers": wm._TransformWatermarks.extract_transform_timers,
        "reshuffle": bigquery.ReshufflePerKey,
        "copy": trigger.InMemoryUnmergedState.copy,
        "no_extraction": trigger._CombiningValueStateTag.without_extraction,
        "prefix": trigger._CombiningValueStateTag.with_prefix,
        "list_prefix": trigger._ListStateTag.with_prefix,
        "set_add": trigger.InMemoryUnmergedState.add_state,
        "arguments": core.get_function_arguments,
        "keyed_states": EvaluationContext._initialize_keyed_states,
        "schedule": ex._ExecutorServiceParallelExecutor.schedule_consumption,
        "await": ex._ExecutorServiceParallelExecutor.await_completion,
        "switch_interval": sys.getswitchinterval(),
    }
    assert after == before
    assert acc.applied() == []


def test_only_the_named_patches_apply_and_bad_settings_are_refused(monkeypatch):
    assert acc.accelerate(patches=["dofn_specs"]) == ["dofn_specs"]
    with pytest.raises(ValueError, match="unknown patches"):
        acc.accelerate(patches=["warp_drive"])
    with pytest.raises(ValueError, match="positive"):
        acc.accelerate(pull_size=0)
    monkeypatch.setenv(acc.PULL_SIZE_ENV, "lots")
    with pytest.raises(ValueError, match=acc.PULL_SIZE_ENV):
        acc.pull_size_from_env()
    monkeypatch.setenv(acc.PULL_SIZE_ENV, "250")
    assert acc.pull_size_from_env() == 250
    monkeypatch.setenv(acc.PATCHES_ENV, "timers, dofn_reuse")
    assert acc.patches_from_env() == ["timers", "dofn_reuse"]


class _Helper:
    def method(self, x):
        return x


def test_cached_dofn_specs_equal_beams():
    from apache_beam.transforms import userstate

    original = userstate.get_dofn_specs
    fns = [
        _StatefulFn(),
        beam.Map(_Helper().method).dofn,
        beam.Map(lambda x: x).dofn,
        beam.ParDo(_StatefulFn()).dofn,
    ]
    expected = [original(f) for f in fns]
    acc.accelerate(patches=["dofn_specs"])
    assert [userstate.get_dofn_specs(f) for f in fns] == expected
    assert [userstate.get_dofn_specs(f) for f in fns] == expected  # from the cache
    assert [userstate.is_stateful_dofn(f) for f in fns] == [True, False, False, True]


def test_prefixed_state_tags_are_built_once_and_equal_beams():
    from apache_beam.transforms.combiners import CountCombineFn
    from apache_beam.transforms.window import TimestampCombiner

    tags = [
        trigger._ReadModifyWriteStateTag("r"),
        trigger._SetStateTag("s"),
        trigger._CombiningValueStateTag("c", CountCombineFn()),
        trigger._ListStateTag("l"),
        trigger._WatermarkHoldStateTag("w", TimestampCombiner.OUTPUT_AT_EOW),
    ]

    def described(tag):
        return type(tag), tag.tag, getattr(tag, "combine_fn", None), repr(tag)

    expected = [described(t.with_prefix("late")) for t in tags]
    acc.accelerate(patches=["combine_tags"])
    prefixed = [t.with_prefix("late") for t in tags]
    assert [described(t) for t in prefixed] == expected
    assert all(t.with_prefix("late") is p for t, p in zip(tags, prefixed, strict=True))
    assert tags[0].with_prefix("early").tag == "earlyr"  # another prefix, another tag
    # The nested tag's "no extraction" twin is now found again, and still counts.
    twin = prefixed[2].without_extraction()
    assert prefixed[2].without_extraction() is twin
    assert twin.combine_fn.apply([1, 1, 1]) == 3 and twin.tag == "latec"


def test_cached_function_arguments_equal_beams():
    from apache_beam.transforms import core

    beams = core.get_function_arguments
    acc.accelerate(patches=["function_arguments"])

    class EchoFn(beam.DoFn):
        def process(self, element, timestamp=beam.DoFn.TimestampParam):
            yield element, timestamp

    def loose(element, window=beam.DoFn.WindowParam):
        return element

    echo = EchoFn()
    echo.finish_bundle = loose  # a plain function stored on the instance: not bound
    mapped = beam.Map(lambda x, k=3: x).fn  # answers through _inspect_process
    for obj, name in [(echo, "process"), (echo, "finish_bundle"), (mapped, "process")]:
        for _ in range(2):  # computed, then from the cache
            assert core.get_function_arguments(obj, name) == beams(obj, name), name
    assert core.get_function_arguments(echo, "process")[0] == ["element", "timestamp"]
    assert core.get_function_arguments(echo, "finish_bundle")[0] == ["element", "window"]
    answer = core.get_function_arguments(echo, "process")
    answer[0].append("changed by a caller")
    assert core.get_function_arguments(echo, "process") == beams(echo, "process")


def test_row_size_check_still_refuses_an_oversized_row():
    from apache_beam.io.gcp.bigquery import BigQueryWriteFn

    fn = BigQueryWriteFn(batch_size=10, max_insert_payload_size=2_000)
    small, big = ({"a": "x" * 10}, "id1"), ({"a": "x" * 5_000}, "id2")
    stock = fn._check_row_size(small), fn._check_row_size(big)
    acc.accelerate(patches=["row_size_check"])
    size, error = fn._check_row_size(small)
    assert error is None and size >= stock[0][0]
    assert fn._check_row_size(big) == stock[1]  # Beam's own figure and error
    assert "exceeds" in stock[1][1]


# ----------------------------------------------------------------- a streaming graph


class _StatefulFn(beam.DoFn):
    """Per key: a running count, emitted when the watermark passes 30 s after it."""

    COUNT = CombiningValueStateSpec("count", sum)
    LAST = ReadModifyWriteStateSpec("last", beam.coders.FloatCoder())
    FLUSH = TimerSpec("flush", TimeDomain.WATERMARK)

    def process(
        self,
        element,
        ts=beam.DoFn.TimestampParam,
        count=beam.DoFn.StateParam(COUNT),
        last=beam.DoFn.StateParam(LAST),
        flush=beam.DoFn.TimerParam(FLUSH),
    ):
        count.add(1)
        last.write(float(element[1]))
        flush.set(ts + 30)
        yield ("seen", element[0], element[1])

    @on_timer(FLUSH)
    def on_flush(
        self,
        key=beam.DoFn.KeyParam,
        count=beam.DoFn.StateParam(COUNT),
        last=beam.DoFn.StateParam(LAST),
    ):
        yield ("flushed", key, count.read(), last.read())
        count.clear()


_THREADS: dict[str, set[int]] = {}  # run id -> threads that inserted (or collected) rows


class _Collect(beam.DoFn):
    def __init__(self, run_id: str, tag: str):
        self._run_id = run_id
        self._tag = tag

    def process(self, element, ts=beam.DoFn.TimestampParam, pane=beam.DoFn.PaneInfoParam):
        with _LOCK:
            _THREADS.setdefault(f"{self._run_id}/collect", set()).add(threading.get_ident())
            _COLLECTED.setdefault(self._run_id, []).append(
                (self._tag, repr(element), float(ts), pane.timing, pane.index)
            )


def _events():
    stream = TestStream()
    t0 = 1_700_000_000
    for step in range(6):
        stream = stream.add_elements(
            [
                window.TimestampedValue((f"k{i % 7}", step * 10 + i), t0 + step * 20 + i % 15)
                for i in range(40)
            ]
        )
        stream = stream.advance_watermark_to(t0 + step * 20 + 5)
    # late data for early windows, then the end
    stream = stream.add_elements([window.TimestampedValue(("k1", 999), t0 + 3)])
    stream = stream.advance_watermark_to(t0 + 400)
    return stream.advance_watermark_to_infinity()


def _run_graph(run_id: str) -> list:
    options = PipelineOptions([], runner="BundleBasedDirectRunner")
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(options=options) as p:
        events = p | "Events" >> _events()
        stateful = events | "CountPerKey" >> beam.ParDo(_StatefulFn())
        stateful | "CollectStateful" >> beam.ParDo(_Collect(run_id, "stateful"))
        sums = (
            events
            | "FixedWindows"
            >> beam.WindowInto(
                window.FixedWindows(30),
                trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
                accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
                allowed_lateness=600,
            )
            | "SumPerKey" >> beam.CombinePerKey(sum)
        )
        sums | "CollectSums" >> beam.ParDo(_Collect(run_id, "sums"))
        helper = _Helper()
        (
            events
            | "BoundMethod" >> beam.Map(helper.method)
            | "CollectMapped" >> beam.ParDo(_Collect(run_id, "mapped"))
        )
    with _LOCK:
        return sorted(_COLLECTED.pop(run_id, []))


def test_streaming_graph_output_is_identical_with_the_patches():
    stock = _run_graph(uuid.uuid4().hex)
    with acc.accelerated(pull_size=50):
        fast = _run_graph(uuid.uuid4().hex)
    assert len(stock) > 300
    assert {row[0] for row in stock} == {"stateful", "sums", "mapped"}
    assert any("flushed" in row[1] for row in stock)
    assert any(row[3] == PaneInfoTiming.LATE for row in stock)
    assert fast == stock


# ----------------------------------------------------------------- BigQuery sink


class _FakeBigQuery:
    """Streaming inserts into memory; refuses rows with ``bad`` (as BigQuery would)."""

    def __init__(self, run_id: str):
        self._run_id = run_id

    def insert_rows_json(self, table, json_rows, row_ids=None, **kwargs):
        with _LOCK:
            _THREADS.setdefault(self._run_id, set()).add(threading.get_ident())
        errors = []
        for i, row in enumerate(json_rows):
            if row.get("bad"):
                errors.append({"index": i, "errors": [{"reason": "invalid", "message": "bad"}]})
            else:
                with _LOCK:
                    _COLLECTED.setdefault(self._run_id, []).append(("inserted", repr(row)))
        return errors


def _run_sink(run_id: str) -> list:
    from apache_beam.io.gcp.bigquery import BigQueryDisposition, WriteToBigQuery
    from apache_beam.io.gcp.bigquery_tools import RetryStrategy

    options = PipelineOptions([], runner="BundleBasedDirectRunner")
    options.view_as(StandardOptions).streaming = True
    stream = TestStream()
    for step in range(3):
        stream = stream.add_elements(
            [{"n": step * 100 + i, "bad": (i % 9 == 0)} for i in range(40)]
        ).advance_watermark_to(1_700_000_000 + step)
    with beam.Pipeline(options=options) as p:
        result = (
            p
            | "Rows" >> stream.advance_watermark_to_infinity()
            | "Write"
            >> WriteToBigQuery(
                table="local-project:d.t",
                method=WriteToBigQuery.Method.STREAMING_INSERTS,
                create_disposition=BigQueryDisposition.CREATE_NEVER,
                write_disposition=BigQueryDisposition.WRITE_APPEND,
                insert_retry_strategy=RetryStrategy.RETRY_ON_TRANSIENT_ERROR,
                test_client=_FakeBigQuery(run_id),
            )
        )
        _ = (
            result.failed_rows_with_errors
            | "Refused" >> beam.Map(lambda f: (f[1], f[2][0]["reason"]))
            | "CollectRefused" >> beam.ParDo(_Collect(run_id, "refused"))
        )
    with _LOCK:
        return sorted((row[0], row[1]) for row in _COLLECTED.pop(run_id, []))


def test_sink_inserts_the_same_rows_and_refused_rows_still_come_back():
    stock_run, fast_run = uuid.uuid4().hex, uuid.uuid4().hex
    stock = _run_sink(stock_run)
    with acc.accelerated():
        fast = _run_sink(fast_run)
    refused = [row for row in stock if row[0] == "refused"]
    assert len(refused) == 15  # i % 9 == 0 for i in 0..39: 5 per step
    assert len(stock) == 120
    assert fast == stock
    # Stock: the inserts ran on the runner's one worker thread, with the other steps;
    # accelerated: on the sink thread.
    with _LOCK:
        stock_inserts, stock_others = _THREADS.pop(stock_run), _THREADS.pop(f"{stock_run}/collect")
        fast_inserts, fast_others = _THREADS.pop(fast_run), _THREADS.pop(f"{fast_run}/collect")
    assert stock_inserts == stock_others
    assert len(fast_inserts) == 1 and fast_inserts.isdisjoint(fast_others)


# ----------------------------------------------------------------- Pub/Sub


class _BundleSizes(beam.DoFn):
    def __init__(self, run_id: str):
        self._run_id = run_id

    def start_bundle(self):
        self._n = 0

    def process(self, message, ts=beam.DoFn.TimestampParam):
        self._n += 1
        with _LOCK:
            _COLLECTED.setdefault(self._run_id, []).append(
                (message.attributes["message_id"], float(ts))
            )

    def finish_bundle(self):
        if self._n:
            with _LOCK:
                _COLLECTED.setdefault(self._run_id + "/bundles", []).append(self._n)


def _read_all(subscription: str, timestamp_attribute: str | None, expected: int) -> tuple:
    run_id = uuid.uuid4().hex
    options = PipelineOptions([], runner="BundleBasedDirectRunner")
    options.view_as(StandardOptions).streaming = True
    p = beam.Pipeline(options=options)
    _ = (
        p
        | "Read"
        >> beam.io.ReadFromPubSub(
            subscription=subscription,
            with_attributes=True,
            timestamp_attribute=timestamp_attribute,
        )
        | "Record" >> beam.ParDo(_BundleSizes(run_id))
    )
    result = p.run()
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            with _LOCK:
                if len(_COLLECTED.get(run_id, [])) >= expected:
                    break
            time.sleep(0.2)
    finally:
        result.cancel()
    with _LOCK:
        return _COLLECTED.pop(run_id, []), _COLLECTED.pop(run_id + "/bundles", [])


@pytest.mark.emulators
@pytest.mark.parametrize("with_timestamp_attribute", [True, False])
def test_pubsub_reads_every_message_in_larger_pulls(
    gcp_project, pubsub_emulator, unique_name, with_timestamp_attribute
):
    from dataset.resources import ensure_pubsub
    from tests.e2e import publish
    from transforms.validation import utc_iso

    _, subscription = ensure_pubsub(gcp_project, unique_name, f"{unique_name}-sub")
    t0 = 1_700_000_000
    messages = [
        ({"i": i}, {"event_time": utc_iso(t0 + i), "message_id": f"m{i}"}) for i in range(60)
    ]
    publish(gcp_project, unique_name, messages)
    published_at = time.time()
    with acc.accelerated(pull_size=25):
        rows, bundles = _read_all(
            subscription, "event_time" if with_timestamp_attribute else None, 60
        )
    assert sorted(r[0] for r in rows) == sorted(f"m{i}" for i in range(60))
    if with_timestamp_attribute:
        assert {r[0]: r[1] for r in rows} == {f"m{i}": float(t0 + i) for i in range(60)}
    else:  # publish time
        assert all(published_at - 60 < r[1] <= published_at + 1 for r in rows)
    assert max(bundles) <= 25
    assert max(bundles) > 10, bundles  # Beam's own pull is 10


def test_timestamp_comparisons_used_by_the_timer_index():
    # The index compares Timestamps with the runner's float wall clock, as Beam does.
    assert Timestamp(10) <= 10.5 and not Timestamp(11) <= 10.5


def test_copied_key_state_equals_beams_copy_and_is_independent():
    from apache_beam.transforms.timeutil import TimeDomain
    from apache_beam.transforms.window import GlobalWindow, IntervalWindow
    from apache_beam.utils.timestamp import Timestamp

    window = IntervalWindow(0, 60)
    state = trigger.InMemoryUnmergedState()
    state.set_timer(window, "", TimeDomain.WATERMARK, Timestamp(60))
    state.set_global_state(trigger._ReadModifyWriteStateTag("window_ids"), {window: [1, 2]})
    state.set_global_state(trigger._ReadModifyWriteStateTag("other"), {"k": _Helper()})
    state.add_state(1, trigger._ListStateTag("values"), "a")
    beams = state.copy()
    acc.accelerate(patches=["timer_copies"])
    ours = state.copy()
    assert repr(ours) == repr(beams)
    assert ours.global_state["window_ids"] == {window: [1, 2]}
    ours.global_state["window_ids"][window].append(3)
    ours.set_timer(window, "late", TimeDomain.WATERMARK, Timestamp(90))
    assert state.global_state["window_ids"] == {window: [1, 2]}  # the original is untouched
    assert list(state.timers[window]) == [("", TimeDomain.WATERMARK, "")]
    # Not a plain value: deep-copied as Beam does.
    assert ours.global_state["other"]["k"] is not state.global_state["other"]["k"]
    shared = [GlobalWindow()]
    copied = acc.copy_plain({"a": shared, "b": shared, "c": (shared, 1)})
    assert copied["a"] is copied["b"] is copied["c"][0] and copied["a"] is not shared
