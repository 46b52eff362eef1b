"""One command for the benchmarks: ``python -m benchmarks.run`` -> ``benchmarks/results.json``.

Parts (``--parts``, default all), back to back in one session:

* ``live``: on one set of emulators, the full pipeline live
  (``benchmarks.pipeline_throughput.measure``), stock and accelerated,
  alternating, ``--reps`` times each (medians reported), and a bare
  ``ReadFromPubSub`` -> no-op pipeline over a pre-published backlog with the
  same runner settings, ``--reps`` times;
* ``inference``: what inline inference adds per element at batch 64
  (``benchmarks.inference_cost``);
* ``batch``: the whole graph on the batch runner over an in-process source
  (``benchmarks.batch_cost``);
* ``freshness``: label published -> first prediction by the model trained on
  it, with its breakdown (``benchmarks.freshness``);
* ``trainer``: trainer time and peak memory at 10k-1M rows
  (``benchmarks.trainer_scale``).

A part that fails is recorded under ``not_measured`` with its error; the
others still run and are written.

``live_ratio_vs_bare_read`` = accelerated live rate / accelerated bare-read
rate. Every measurement records the 1-minute load average before and after:
on a shared machine absolute figures are depressed, the stock/accelerated
comparison (same session, alternating) is the robust part.

    python -m benchmarks.run [--reps 3] [--rate 300] [--duration 60] [--bare-events 20000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from importlib import metadata
from pathlib import Path

from benchmarks.pipeline_throughput import (
    PROJECT,
    ROOT,
    bootstrap_registry,
    load1,
    measure,
    median_of,
)

RESULTS = ROOT / "benchmarks" / "results.json"

PARTS = ("live", "inference", "batch", "freshness", "trainer")
# The top-level key(s) each part fills; None until it ran.
PART_KEYS = {
    "live": (
        "live_events_per_s",
        "live_ratio_vs_bare_read",
        "latency_p50_s",
        "latency_p99_s",
        "pipeline_peak_rss_mib",
    ),
    "inference": ("inference_us_per_element",),
    "batch": ("batch_us_per_element",),
    "freshness": ("freshness_s",),
    "trainer": ("trainer_rows",),
}


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict:
    """Machine and versions the figures were taken on."""
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": mem,
        "python": platform.python_version(),
        "apache_beam": _version("apache-beam"),
        "tensorflow": _version("tensorflow"),
        "google_cloud_pubsub": _version("google-cloud-pubsub"),
        "bqemulator": _version("bqemulator"),
    }


def _publish_backlog(topic: str, n: int) -> None:
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient(
        batch_settings=pubsub_v1.types.BatchSettings(max_messages=1000)
    )
    path = publisher.topic_path(PROJECT, topic)
    futures = [
        publisher.publish(path, json.dumps({"i": i}).encode(), message_id=f"bare-{i}")
        for i in range(n)
    ]
    for f in futures:
        f.result(timeout=120)


def measure_bare_read(state: Path, events: int, accelerated: bool) -> dict:
    """The bare-read baseline over a fresh backlog of ``events`` messages."""
    from dataset.resources import ensure_pubsub

    topic = f"bare{uuid.uuid4().hex[:8]}"
    _, subscription = ensure_pubsub(PROJECT, topic, f"{topic}-sub")
    _publish_backlog(topic, events)
    load_before = load1()
    cmd = [sys.executable, "-m", "benchmarks.bare_read", "--subscription", subscription,
           "--events", str(events)]  # fmt: skip
    if not accelerated:
        cmd.append("--no_accelerate")
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        (state / f"{topic}.log").write_text(out.stdout + out.stderr)
        raise RuntimeError(f"bare read failed; see {state / f'{topic}.log'}")
    result = json.loads(lines[-1])
    result.update(
        mode="accelerated" if accelerated else "stock",
        load1_before=load_before,
        load1_after=load1(),
    )
    return result


def _ladder(state: Path, registry: Path, args: argparse.Namespace) -> list[dict]:
    """One live run per cumulative set of patches: what each one adds."""
    from local.accelerate import PATCHES

    names = list(PATCHES)
    steps = []
    for k in range(len(names) + 1):
        _log(f"ladder: {names[:k] or 'no patches'}")
        run = measure(
            state, registry, accelerated=True, rate=args.rate, duration=args.duration,
            drain=args.drain, patches=names[:k],
        )  # fmt: skip
        _log(f"  {run}")
        steps.append(
            {
                "patches": names[:k],
                "events_per_s": run["events_per_s"],
                "all_landed": run["all_landed"],
                "load1_before": run["load1_before"],
                "load1_after": run["load1_after"],
            }
        )
    return steps


def _log(message: str) -> None:
    print(f"[benchmarks {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _live(args: argparse.Namespace) -> tuple[dict, dict]:
    """The live part: (top-level figures, details)."""
    from local.emulators import emulators

    modes = [True] if args.skip_stock else [False, True]
    live: dict[str, list[dict]] = {"stock": [], "accelerated": []}
    bare: dict[str, list[dict]] = {"stock": [], "accelerated": []}
    state = Path(tempfile.mkdtemp(prefix="bench-"))
    with emulators(state, project=PROJECT) as emus:
        os.environ.update(emus.env)
        _log(f"emulators up; bootstrapping a model (state: {state})")
        registry = bootstrap_registry(state)
        for rep in range(args.reps):
            order = modes if rep % 2 == 0 else list(reversed(modes))
            for accelerated in order:
                name = "accelerated" if accelerated else "stock"
                _log(f"rep {rep + 1}/{args.reps}: bare read, {name}")
                bare[name].append(measure_bare_read(state, args.bare_events, accelerated))
                _log(f"  {bare[name][-1]}")
                _log(f"rep {rep + 1}/{args.reps}: full pipeline live, {name}")
                live[name].append(
                    measure(
                        state,
                        registry,
                        accelerated=accelerated,
                        rate=args.rate,
                        duration=args.duration,
                        drain=args.drain,
                        trainer=not args.no_trainer,
                    )  # fmt: skip
                )
                _log(f"  {live[name][-1]}")
        ladder = _ladder(state, registry, args) if args.ladder else None
    fast, stock = live["accelerated"], live["stock"]
    fast_rate, stock_rate = median_of(fast, "events_per_s"), median_of(stock, "events_per_s")
    bare_fast = median_of(bare["accelerated"], "events_per_s")
    rss = [r["pipeline_peak_rss_mib"] for r in fast if r.get("pipeline_peak_rss_mib")]
    figures = {
        "live_events_per_s": fast_rate,
        "live_events_per_s_stock": stock_rate,
        "speedup_vs_stock": round(fast_rate / stock_rate, 2) if fast_rate and stock_rate else None,
        "live_ratio_vs_bare_read": round(fast_rate / bare_fast, 3)
        if fast_rate and bare_fast
        else None,
        "bare_read_events_per_s": bare_fast,
        "bare_read_events_per_s_stock": median_of(bare["stock"], "events_per_s"),
        "latency_p50_s": median_of(fast, "latency_p50_s"),
        "latency_p99_s": median_of(fast, "latency_p99_s"),
        "all_landed": all(r["all_landed"] for r in fast) if fast else None,
        "pipeline_peak_rss_mib": max(rss) if rss else None,
    }
    details = {
        "method": {
            "live": f"full graph (validation, aggregates, inference, quality, triggers, all "
            f"BigQuery sinks; --retrain_topic set, "
            f"{'no launcher' if args.no_trainer else 'launcher with its warm trainer retraining'}"
            f"), 300 sensors, simulator "
            f"offering {args.rate:g} events/s for {args.duration:g} s, drain allowance "
            f"{args.drain:g} s; landed = min(training rows, prediction rows); rate from the "
            f"first poll that saw a landed row to the last increase; median of "
            f"{args.reps} runs",
            "bare_read": f"ReadFromPubSub -> no-op, backlog of {args.bare_events} messages, "
            "same runner settings; rate between first and last message; median",
            "shared_machine": "load1_before/after recorded per run; stock and accelerated "
            "alternate in one session",
        },
        "ladder": ladder,
        "runs": {"live": live, "bare_read": bare},
    }
    return figures, details


def _inference(args: argparse.Namespace) -> tuple[dict, dict]:
    from benchmarks import inference_cost

    result = inference_cost.main(["--repeats", str(args.reps)])
    return {"inference_us_per_element": result["inference_us_per_element"]}, result


def _batch(args: argparse.Namespace) -> tuple[dict, dict]:
    from benchmarks import batch_cost

    # The stock runner first (its figure is ``batch_us_per_element``), then with the
    # local patches; written to the part's own file too, which a later run carries over.
    result = batch_cost.measure(repeats=args.reps, modes=(False, True))
    Path(batch_cost.RESULTS).write_text(json.dumps(result, indent=1) + "\n")
    return {"batch_us_per_element": result["batch_us_per_element"]}, result


def _freshness(args: argparse.Namespace) -> tuple[dict, dict]:
    from benchmarks import freshness

    if freshness.main([]) != 0:  # warm then cold; writes freshness.RESULTS
        raise RuntimeError("benchmarks.freshness failed")
    result = json.loads(Path(freshness.RESULTS).read_text())
    return {"freshness_s": result["freshness_s"]}, result


def _trainer(args: argparse.Namespace) -> tuple[dict, dict]:
    from benchmarks import trainer_scale

    result = trainer_scale.measure()
    return {"trainer_rows": result["trainer_rows"]}, result


# Where each part's own benchmark writes its latest full results (the live part's
# latest figures are the previous benchmarks/results.json's). The same paths as each
# module's ``RESULTS`` (tested), not imported from them: two of them import Beam.
PART_FILES = {
    "inference": ROOT / "benchmarks" / "results" / "inference_cost.json",
    "batch": ROOT / "benchmarks" / "results" / "batch_cost.json",
    "freshness": ROOT / "benchmarks" / "results" / "freshness.json",
    "trainer": ROOT / "benchmarks" / "results" / "trainer_scale.json",
}
_TIME_KEYS = ("measured_at", "finished_at", "at", "started_at")


def carried_over(part: str, previous: dict) -> tuple[dict, dict] | None:
    """A part not run this time: its figures from its latest results file, if any.

    Returns (top-level figures, details with ``carried_over_from`` and the time it
    was measured), or None when nothing was measured before.
    """
    keys = PART_KEYS[part]
    if part == "live":
        if previous.get("live_events_per_s") is None:
            return None
        source = previous.get("details", {}).get("live", {})
        measured = previous.get("parts_measured_at", {}).get("live", previous.get("started_at"))
        figures = {k: v for k, v in previous.items() if k.startswith(("live_", "bare_read_"))}
        figures.update({k: previous.get(k) for k in keys})
        for key in ("speedup_vs_stock", "all_landed"):
            if key in previous:
                figures[key] = previous[key]
        return figures, {
            "carried_over_from": str(RESULTS),
            "measured_at": measured,
            **source,
        }
    path = PART_FILES[part]
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if any(data.get(k) is None for k in keys):
        return None
    measured = next((data[k] for k in _TIME_KEYS if data.get(k)), None)
    return {k: data[k] for k in keys}, {
        "carried_over_from": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
        "measured_at": measured,
    }


RUNNERS = {
    "live": _live,
    "inference": _inference,
    "batch": _batch,
    "freshness": _freshness,
    "trainer": _trainer,
}


def parse_parts(text: str) -> list[str]:
    """``--parts`` value -> the parts to run, in ``PARTS`` order."""
    wanted = {p.strip() for p in text.split(",") if p.strip()}
    unknown = wanted - set(PARTS)
    if unknown or not wanted:
        raise argparse.ArgumentTypeError(
            f"unknown part(s) {sorted(unknown)}; choose from {','.join(PARTS)}"
            if unknown
            else "no part given"
        )
    return [p for p in PARTS if p in wanted]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--parts",
        type=parse_parts,
        default=list(PARTS),
        help=f"comma-separated subset of {','.join(PARTS)} (default: all)",
    )
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each (3)")
    parser.add_argument("--rate", type=float, default=300, help="offered events/s (300)")
    parser.add_argument("--duration", type=float, default=60, help="publishing seconds (60)")
    parser.add_argument("--drain", type=float, default=40, help="seconds allowed after (40)")
    parser.add_argument("--bare-events", type=int, default=20000, help="bare-read backlog")
    parser.add_argument("--skip-stock", action="store_true", help="accelerated only")
    parser.add_argument(
        "--no-trainer",
        action="store_true",
        help="live runs without the training launcher (it runs by default, as in run_local.sh)",
    )
    parser.add_argument(
        "--ladder",
        action="store_true",
        help="also one live run per cumulative set of patches (order of local.accelerate.PATCHES)",
    )
    parser.add_argument(
        "--no-carry-over",
        action="store_true",
        help="leave parts not run empty (default: keep their latest figures, from the "
        "previous --out file for live and from each benchmark's own results file, "
        "with when they were measured)",
    )
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error("--reps must be >= 1")
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    try:
        previous = json.loads(Path(args.out).read_text())
    except (OSError, ValueError):
        previous = {}
    results: dict = {key: None for part in PARTS for key in PART_KEYS[part]}
    not_measured: dict[str, str] = {}
    measured_at: dict[str, str | None] = {}
    details: dict[str, dict] = {}
    for part in PARTS:
        if part in args.parts:
            continue
        kept = None if args.no_carry_over else carried_over(part, previous)
        if kept is None:
            not_measured[part] = "not run (--parts)"
            continue
        figures, details[part] = kept
        results.update(figures)
        measured_at[part] = details[part]["measured_at"]
        _log(f"part {part}: not run; kept from {details[part]['carried_over_from']}")
    for part in args.parts:
        _log(f"part {part}")
        try:
            figures, details[part] = RUNNERS[part](args)
        except Exception as error:  # noqa: BLE001 - one failed part must not lose the others
            _log(f"part {part} failed: {error!r}")
            not_measured[part] = f"failed: {error!r}"
            continue
        results.update(figures)
        measured_at[part] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    results.update(
        parts_measured_at=measured_at,
        not_measured=not_measured,
        machine=machine(),
        load1_at_end=load1(),
        started_at=started,
        finished_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        details=details,
    )
    Path(args.out).write_text(json.dumps(results, indent=1, default=str) + "\n")
    _log(f"wrote {args.out}")
    print(json.dumps({k: v for k, v in results.items() if k != "details"}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
