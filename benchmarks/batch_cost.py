"""Benchmark: CPU cost per element of the whole streaming graph, on a batch runner.

The graph is the one ``pipelines.streaming.build_pipeline`` builds for
``pipelines.main`` (dedup, validation, both windowed aggregates, inference,
online quality, retraining triggers, every sink's step), with two seams:

* the source is in process: ``Impulse | FlatMap`` over pre-built
  ``PubsubMessage`` objects shaped like the real read's (JSON bytes, the
  event-time and id attributes, ``message_id``, ``publish_time``; timestamped
  with their publish time), so the source's own cost does not hide ours;
* the sinks (BigQuery tables, the retraining topic) are counting no-ops
  (``CountingSinks``): nothing touches a network.

Three pipelines over the same messages, alternating, ``--repeats`` times each
after one warm-up round: ``noop`` (source -> counting sink), ``graph`` (full
graph without a model registry: no inference, no quality) and ``graph_inference``
(full graph, ``RegistryModelHandler`` on a bootstrapped model). ``added`` is
a pipeline's cost minus the no-op's. Times are CPU seconds of this process
(``time.process_time``: every thread of the in-process runner, TensorFlow's
included) from ``run()`` to the end, so graph construction is not counted;
wall seconds are recorded too. Median per element, in µs. Also: how many
rows reached each sink (a graph that silently dropped predictions would look
cheap), the machine, the 1-minute load before and after each run, and
optionally (``--profile``) a cProfile of one ``graph_inference`` run.

``benchmarks.cost_model`` turns the cost into Dataflow workers (README,
"Running on Google Cloud -> 9. Costs to expect", states the assumptions).

    python -m benchmarks.batch_cost [--elements 20000] [--repeats 3]
        [--runner BundleBasedDirectRunner|FnApiRunner] [--profile] [--registry DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as dt
import json
import marshal
import math
import os
import pstats
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import apache_beam as beam  # noqa: E402
from apache_beam.io.gcp.pubsub import PubsubMessage  # noqa: E402
from apache_beam.metrics import Metrics  # noqa: E402
from apache_beam.metrics.metric import MetricsFilter  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from apache_beam.transforms.window import TimestampedValue  # noqa: E402
from apache_beam.utils.timestamp import Timestamp  # noqa: E402

from benchmarks.cost_model import cost_table, vcpu_seconds_per_million  # noqa: E402
from benchmarks.pipeline_throughput import load1  # noqa: E402
from pipelines.streaming import Sinks, build_pipeline  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "batch_cost.json"
CONFIG = "configs/traffic.yaml"


def config_path() -> str:
    """``CONFIG`` without its ``history_features``, written once to the temp directory.

    Why: on this in-process bounded source the local runner loses the rows that
    cross a second keyed stage at end of input (see docs: its windows all fire
    at the end; 0 of 60 training rows reached their sink once the history step
    was in the graph), and a benchmark must count the rows it claims. The
    history step is one stateful ParDo (``transforms.history``); its per-element
    cost is not in these figures.
    """
    import hashlib

    import yaml

    text = (ROOT / CONFIG).read_text()
    raw = yaml.safe_load(text)
    raw.pop("history_features", None)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / f"batch_cost_{Path(CONFIG).stem}_{digest}.yaml"
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(yaml.safe_dump(raw, sort_keys=False))
        tmp.replace(path)
    return str(path)


PROJECT = "bench-project"
NAMESPACE = "benchmark"
RUNNERS = ("BundleBasedDirectRunner", "FnApiRunner")
PIPELINES = ("noop", "graph", "graph_inference")
# Seconds between an event and its publish time (the element's timestamp).
PUBLISH_DELAY_S = 0.2


# ---------------------------------------------------------------- pipelines


def expected_rows(keys_and_times: list[tuple[str, float]], config) -> dict[str, int]:
    """Rows each sink should get when every window fires once (no late data):
    one aggregate per key and window, one quality row per evaluation window
    (one model version), one training row and one prediction per event."""
    from transforms.aggregation import window_fn

    pairs = set()
    for spec in config.windows:
        fn = window_fn(spec)
        for key, t in keys_and_times:
            for w in fn.assign(_AssignContext(Timestamp.of(t))):
                pairs.add((spec.name, key, float(w.start)))
    size = config.evaluation_window_seconds
    quality = {math.floor(t / size) for _, t in keys_and_times}
    n = len(keys_and_times)
    return {
        "WriteAggregates": len(pairs),
        "WritePredictionQuality": len(quality),
        "WritePredictions": n,
        "WriteTrainingExamples": n,
    }


class _AssignContext:
    def __init__(self, timestamp: float):
        self.timestamp = timestamp


def build_messages(
    n: int, rate: float, start: float
) -> tuple[list[TimestampedValue], dict[str, int]]:
    """``n`` simulated readings as the Pub/Sub read yields them, publish-time stamped,
    and the rows each sink should get from them (``expected_rows``).

    Readings of the traffic simulator (300 sensors) at ``rate`` events/s of
    event time from ``start``; data and attributes exactly as the publisher
    (``simulator.messages.build_message``) sends them.
    """
    from dataset.config import load_config
    from simulator.messages import build_message
    from simulator.traffic import TrafficSimulator

    config = load_config(config_path())
    sim = TrafficSimulator(seed=7)
    out, keys_and_times = [], []
    for i, (t, reading) in enumerate(sim.events(start, start + n / rate + 1, rate)):
        if i == n:
            break
        keys_and_times.append((reading[config.key_field], t))
        msg = build_message(reading, config, t, f"bench-{i:08d}")
        published = t + PUBLISH_DELAY_S
        message = PubsubMessage(
            msg.data,
            dict(msg.attributes),
            message_id=str(10_000_000 + i),
            publish_time=dt.datetime.fromtimestamp(published, dt.UTC),
        )
        out.append(TimestampedValue(message, published))
    if len(out) != n:
        raise RuntimeError(f"built {len(out)} messages, wanted {n}")
    return out, expected_rows(keys_and_times, config)


class InMemoryMessages(beam.PTransform):
    """``Impulse | FlatMap`` over pre-built messages: a source with (almost) no cost."""

    def __init__(self, messages: list[TimestampedValue]):
        super().__init__()
        self._messages = messages

    def expand(self, pbegin):
        messages = self._messages
        return pbegin | "Impulse" >> beam.Impulse() | "Messages" >> beam.FlatMap(lambda _: messages)


class _CountFn(beam.DoFn):
    """Counts what reaches a sink (per step, one fixed metric name); emits nothing."""

    def __init__(self):
        self._rows = Metrics.counter(NAMESPACE, "sink_rows")

    def process(self, element):
        self._rows.inc()
        return ()


class _Count(beam.PTransform):
    def expand(self, pcoll):
        return pcoll | "CountRows" >> beam.ParDo(_CountFn())


class CountingSinks(Sinks):
    """Every sink counts its rows and writes nothing; no dead letters come back."""

    def rows(self, table: str) -> beam.PTransform:
        return _Count()

    def dead_letters(self, table: str) -> beam.PTransform:
        return _Count()

    def messages(self, topic: str) -> beam.PTransform:
        return _Count()


def pipeline_args(runner: str, registry: Path | None) -> list[str]:
    """The production pipeline's flags (placeholder names; nothing is contacted)."""
    args = [
        f"--runner={runner}",
        "--direct_num_workers=1",
        # The graph's processing-time triggers need the streaming GroupAlsoByWindow
        # (the batch one has no clock); the bounded source still ends the run.
        "--streaming",
        f"--project={PROJECT}",
        f"--dataset_config={config_path()}",
        f"--input_subscription=projects/{PROJECT}/subscriptions/events",
        "--bq_dataset=bench",
        f"--retrain_topic=projects/{PROJECT}/topics/retrain",
        "--model_poll_seconds=3600",
    ]
    if registry is not None:
        args.append(f"--model_registry={registry}")
    return args


def build(kind: str, runner: str, messages: list, registry: Path | None) -> beam.Pipeline:
    """The ``kind`` pipeline (one of ``PIPELINES``), built, not run."""
    if kind not in PIPELINES:
        raise ValueError(f"unknown pipeline {kind!r}; choose from {PIPELINES}")
    options = PipelineOptions(
        pipeline_args(runner, registry if kind == "graph_inference" else None)
    )
    p = beam.Pipeline(options=options)
    source = InMemoryMessages(messages)
    if kind == "noop":
        _ = p | "ReadEvents" >> source | "WriteNothing" >> _Count()
    else:
        build_pipeline(p, options, source=source, sinks=CountingSinks())
    return p


def _sink_counts(result) -> dict[str, int]:
    counters = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    out: dict[str, int] = {}
    for c in counters:
        step = c.key.step.split("/")[0]
        out[step] = out.get(step, 0) + int(c.committed or c.attempted or 0)
    return dict(sorted(out.items()))


class ThreadProfiles:
    """cProfile of this thread and of every thread started while enabled (the
    runner evaluates bundles on its own worker threads), each timed with its
    thread's CPU time (``time.thread_time``): waiting and descheduling on a
    shared machine do not count."""

    def __init__(self):
        self.profiles: list[cProfile.Profile] = []

    def _start(self, _frame, _event, _arg):
        # threading.setprofile runs this first in each new thread; cProfile then
        # replaces it there.
        profiler = cProfile.Profile(time.thread_time)
        self.profiles.append(profiler)
        profiler.enable()

    def __enter__(self) -> ThreadProfiles:
        threading.setprofile(self._start)
        main = cProfile.Profile(time.thread_time)
        self.profiles.append(main)
        main.enable()
        return self

    def __exit__(self, *exc) -> None:
        threading.setprofile(None)
        self.profiles[0].disable()

    def stats(self) -> pstats.Stats:
        """All threads' profiles merged."""
        with tempfile.TemporaryDirectory() as tmp:
            files = []
            for i, profiler in enumerate(self.profiles):
                profiler.snapshot_stats()
                path = os.path.join(tmp, f"{i}.prof")
                with open(path, "wb") as f:
                    marshal.dump(profiler.stats, f)  # type: ignore[attr-defined]
                files.append(path)
            return pstats.Stats(*files)


def run_once(
    kind: str,
    runner: str,
    messages: list,
    registry: Path | None,
    profiles: ThreadProfiles | None = None,
) -> dict[str, Any]:
    """Builds and runs one pipeline; CPU and wall seconds of ``run()`` to the end."""
    p = build(kind, runner, messages, registry)
    load_before = load1()
    cpu, wall = time.process_time(), time.perf_counter()
    with profiles or contextlib.nullcontext():
        result = p.run()
        result.wait_until_finish()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {
        "pipeline": kind,
        "cpu_s": round(cpu, 3),
        "wall_s": round(wall, 3),
        "sink_rows": _sink_counts(result),
        "load1_before": load_before,
        "load1_after": load1(),
    }


def _owner(filename: str) -> str:
    """Which code a profiled function belongs to, for the cost split."""
    path = filename.replace("\\", "/")
    for ours in ("/transforms/", "/model/", "/dataset/", "/pipelines/", "/benchmarks/"):
        if ours in path and "site-packages" not in path:
            return "ours:" + ours.strip("/")
    if "/local/" in path and "site-packages" not in path:
        return "local_patches"
    for lib in ("apache_beam", "tensorflow", "keras", "numpy", "google", "dill", "cloudpickle"):
        if f"site-packages/{lib}" in path:
            return lib
    if path.startswith("<") or "/lib/python3" in path or path == "~":
        return "python"
    return "other"


def _is_waiting(key: tuple) -> bool:
    """A thread blocked on a lock or queue (the main thread waits for the runner)."""
    filename, _, name = key
    return filename == "~" and ("acquire" in name or "sleep" in name)


def _stage_functions() -> dict[tuple[str, int, str], str]:
    """The legacy runner's entry points, as profile keys -> stage. Cumulative times;
    the stages do not nest in one another (trigger driver work is inside GABW)."""
    import inspect

    from apache_beam.runners.direct import transform_evaluator as te
    from apache_beam.runners.direct import watermark_manager as wm
    from apache_beam.transforms import trigger, userstate

    functions = {
        te._StreamingGroupAlsoByWindowEvaluator.process_element: "windowing_and_triggers",
        trigger.GeneralTriggerDriver.process_elements: "trigger_driver_on_elements",
        trigger.GeneralTriggerDriver.process_timer: "trigger_driver_on_timers",
        te._ParDoEvaluator.process_element: "pardo_elements",
        te._TransformEvaluator.process_timer_wrapper: "user_and_gabw_timers",
        wm.WatermarkManager.extract_all_timers: "timer_extraction",
        userstate.get_dofn_specs: "dofn_spec_inspection",
    }
    out = {}
    for fn, stage in functions.items():
        code = inspect.unwrap(fn).__code__
        out[(code.co_filename, code.co_firstlineno, code.co_name)] = stage
    return out


def _stage_times(entries: dict, total: float) -> dict[str, float]:
    stages = _stage_functions()
    out = {stages[k]: v[3] for k, v in entries.items() if k in stages}
    return {k: round(v / total, 3) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


def profile_summary(stats: pstats.Stats, top: int = 30) -> dict[str, Any]:
    """Busy time (self time outside lock waits) per owner (ours, Beam, TF...), and the
    top entries by cumulative and by self time, as shares of the busy time."""
    entries = stats.stats  # type: ignore[attr-defined]
    busy = {k: v for k, v in entries.items() if not _is_waiting(k)}
    total = sum(v[2] for v in busy.values()) or 1.0
    by_owner: dict[str, float] = {}
    for (filename, _, _), (_, _, tt, _, _) in busy.items():
        owner = _owner(filename)
        by_owner[owner] = by_owner.get(owner, 0.0) + tt

    def name(key: tuple) -> str:
        filename, line, function = key
        return f"{Path(filename).name}:{line}({function})"

    # Cumulative times of the waiting frames' callers include the wait: leave out
    # the runner's outer loops, which only wait.
    cumulative = [
        {"function": name(k), "calls": v[1], "cumtime_s": round(v[3], 3),
         "cum_share": round(v[3] / total, 3)}
        for k, v in sorted(busy.items(), key=lambda kv: kv[1][3], reverse=True)
        if v[3] <= total
    ][:top]  # fmt: skip
    selftime = [
        {"function": name(k), "owner": _owner(k[0]), "tottime_s": round(v[2], 3),
         "share": round(v[2] / total, 3)}
        for k, v in sorted(busy.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    ]  # fmt: skip
    return {
        "busy_s": round(total, 3),
        "busy_share_by_owner": {
            k: round(v / total, 3) for k, v in sorted(by_owner.items(), key=lambda kv: -kv[1])
        },
        # Cumulative share of the busy time; ParDo elements include our DoFns,
        # inference and the work of the ParDos they output to within a bundle.
        "stage_share": _stage_times(busy, total),
        "top_cumulative": cumulative,
        "top_self_time": selftime,
    }


def row_size_check_us(repeats: int = 200) -> dict[str, Any]:
    """CPU µs per row of the size check Beam's streaming-insert writer runs on every
    row (``BigQueryWriteFn._check_row_size`` -> ``objsize.get_deep_size``, which walks
    every loaded module's globals first), in this process as it is now (with
    TensorFlow loaded, as on a worker that predicts), against the same walk without
    that exclusion. A prediction row of the traffic config."""
    import objsize

    row = (
        {
            "example_id": "bench-00000001",
            "sensor_id": "S0001",
            "event_time": "2026-11-25T11:00:00.000000Z",
            "prediction": 0.12,
            "predicted_label": 0,
            "model_version": "v0001",
            "predicted_at": "2026-11-25T11:00:00.200000Z",
        },
        "insert-id-0001",
    )

    def per_row(exclude: bool) -> float:
        objsize.get_deep_size(row, exclude_modules_globals=exclude)
        start = time.process_time()
        for _ in range(repeats):
            objsize.get_deep_size(row, exclude_modules_globals=exclude)
        return round((time.process_time() - start) / repeats * 1e6, 1)

    return {
        "loaded_modules": len(sys.modules),
        "beam_check_us_per_row": per_row(True),
        "without_module_scan_us_per_row": per_row(False),
    }


def _median_us(runs: list[dict], key: str, n: int) -> float:
    return round(statistics.median(r[key] for r in runs) / n * 1e6, 1)


def _patched(local_patches: bool):
    """``local.accelerate`` (the local runner's patches, as ``run_local.sh`` runs) or nothing."""
    if not local_patches:
        return contextlib.nullcontext()
    from local.accelerate import accelerated

    return accelerated()


def measure_mode(
    messages: list,
    registry: Path,
    elements: int,
    repeats: int,
    runner: str,
    local_patches: bool,
    profile: bool,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The three pipelines, alternating, ``repeats`` times after a small warm-up round."""
    runs: dict[str, list[dict]] = {k: [] for k in PIPELINES}
    mode = "local_patches" if local_patches else "stock"
    profiled = None
    with _patched(local_patches):
        for kind in PIPELINES:  # warm-up: imports, TensorFlow, model load, caches
            run = run_once(kind, runner, messages[: min(2000, elements)], registry)
            log(f"{mode} warm-up {kind}: {run}")
        for rep in range(repeats):
            order = PIPELINES if rep % 2 == 0 else tuple(reversed(PIPELINES))
            for kind in order:
                run = run_once(kind, runner, messages, registry)
                log(f"{mode} rep {rep + 1}/{repeats} {kind}: {run}")
                runs[kind].append(run)
        if profile:
            profiles = ThreadProfiles()
            run = run_once("graph_inference", runner, messages, registry, profiles)
            log(f"{mode} profiled graph_inference: {run}")
            profiled = {"run": run, **profile_summary(profiles.stats())}
    us = {k: _median_us(runs[k], "cpu_s", elements) for k in PIPELINES}
    full = us["graph_inference"]
    return {
        "noop_us_per_element": us["noop"],
        "graph_us_per_element": us["graph"],
        "graph_inference_us_per_element": full,
        "added_us_per_element": round(us["graph"] - us["noop"], 1),
        "added_with_inference_us_per_element": round(full - us["noop"], 1),
        "inference_added_us_per_element": round(full - us["graph"], 1),
        "wall_us_per_element": {k: _median_us(runs[k], "wall_s", elements) for k in PIPELINES},
        "sink_rows": runs["graph_inference"][-1]["sink_rows"],
        "runs": runs,
        "profile": profiled,
    }


def measure(
    elements: int = 20_000,
    repeats: int = 3,
    runner: str = "BundleBasedDirectRunner",
    registry: Path | None = None,
    rate: float = 100.0,
    profile: bool = False,
    modes: tuple[bool, ...] = (False, True),
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measures the three pipelines per mode (stock runner, then with ``local.accelerate``).

    Args:
        elements: messages per run (≥ 20k amortises the runner's start-up).
        repeats: measured runs per pipeline and mode; medians are reported.
        runner: ``BundleBasedDirectRunner`` (``FnApiRunner`` cannot run the graph:
            it has no processing-time triggers).
        registry: a model registry with a current version; None bootstraps one
            (``benchmarks.pipeline_throughput.bootstrap_registry``) in a temporary
            directory.
        rate: event-time rate of the messages, events/s (300 sensors).
        profile: also profile one extra ``graph_inference`` run per mode (cProfile,
            every thread).
        modes: False = the stock runner, True = with the local runner's patches.
        log: progress lines (default: stderr).

    Returns:
        ``batch_us_per_element``: the full graph with inference, CPU µs per
        element, on the stock runner (the first mode); the per-mode figures
        under ``stock`` / ``local_patches``; the cost table; as written to
        ``benchmarks/results/batch_cost.json``.
    """
    from benchmarks.run import machine

    if runner not in RUNNERS:
        raise ValueError(f"--runner must be one of {RUNNERS}, got {runner!r}")
    if elements < 1 or repeats < 1 or not modes:
        raise ValueError("elements, repeats and modes must not be empty or below 1")
    log = log or (lambda m: print(f"[batch_cost {time.strftime('%H:%M:%S')}] {m}", file=sys.stderr))
    tmp = None
    if registry is None:
        from benchmarks.pipeline_throughput import bootstrap_registry

        tmp = tempfile.TemporaryDirectory(prefix="batch-cost-")
        log("bootstrapping a model (trainer.bootstrap, 5000 simulated events)")
        registry = bootstrap_registry(Path(tmp.name), config=config_path())
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    start_time = math.floor(time.time() / 3600) * 3600 - 86_400  # a past hour: fixed windows
    messages, expected = build_messages(elements, rate, start_time)
    results: dict[str, Any] = {}
    try:
        for local_patches in modes:
            name = "local_patches" if local_patches else "stock"
            results[name] = measure_mode(
                messages, registry, elements, repeats, runner, local_patches, profile, log
            )
    finally:
        if tmp is not None:
            tmp.cleanup()
    headline = results["stock" if not modes[0] else "local_patches"]
    full = headline["graph_inference_us_per_element"]
    return {
        "batch_us_per_element": full,
        "batch_us_per_element_mode": "stock" if not modes[0] else "local_patches",
        "target_us_per_element": 150,
        **{k: v for k, v in headline.items() if k.endswith("_us_per_element")},
        "vcpu_s_per_million_events": round(vcpu_seconds_per_million(full), 1),
        "dataflow_workers_at_65pct": cost_table(full),
        "runner": runner,
        "elements": elements,
        "repeats": repeats,
        "event_rate_per_s": rate,
        "expected_sink_rows": expected,
        "bigquery_row_size_check": row_size_check_us(),
        "method": (
            "CPU time (time.process_time, all threads of this process) from run() to the "
            "end (graph construction excluded), median of the repeats after a warm-up "
            "round, pipelines alternating; BundleBasedDirectRunner with --streaming (the "
            "graph's processing-time triggers need it); source: Impulse | FlatMap over "
            "pre-built PubsubMessages (publish-time timestamps); sinks: counting no-ops "
            "(pipelines.streaming.Sinks seam); graph = pipelines.streaming.build_pipeline "
            "with --retrain_topic; graph_inference adds --model_registry (a bootstrapped "
            "model); load1 before/after each run in runs"
        ),
        "machine": machine(),
        "started_at": started,
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runner", choices=RUNNERS, default="BundleBasedDirectRunner")
    parser.add_argument("--rate", type=float, default=100.0, help="event-time events/s")
    parser.add_argument("--registry", type=Path, default=None, help="reuse this registry")
    parser.add_argument("--profile", action="store_true", help="cProfile one extra run per mode")
    parser.add_argument(
        "--modes",
        default="stock,local_patches",
        help="comma-separated: stock (the stock runner), local_patches (local.accelerate)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    names = [m for m in args.modes.split(",") if m]
    if not names or set(names) - {"stock", "local_patches"}:
        parser.error("--modes: stock and/or local_patches")
    result = measure(
        args.elements,
        args.repeats,
        args.runner,
        args.registry,
        args.rate,
        args.profile,
        tuple(m == "local_patches" for m in names),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    summary = {k: v for k, v in result.items() if k not in ("stock", "local_patches", "machine")}
    summary.update(
        {m: {k: v for k, v in result[m].items() if k not in ("runs", "profile")} for m in names}
    )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
