"""Opt-in memory tracing for local runs (dev tooling; never used in production).

``python -m local.pipeline`` calls ``start_from_env()``; nothing happens unless
``LOCAL_MEMORY_TRACE=SECONDS`` is set. Then a daemon thread appends one JSON
line every SECONDS to ``LOCAL_MEMORY_TRACE_FILE`` (default
``<RUN_LOCAL_STATE_DIR or .local/run>/memory-trace.jsonl``):

* ``rss_mib``: the process's resident memory;
* ``malloc``: glibc's ``mallinfo2`` over all arenas (bytes in use, free in the
  heap, mmapped), which also sees C/C++ allocations (TensorFlow, gRPC);
* ``gc_objects`` and the object types whose count grew most since warm-up;
* after warm-up: ``traced_mib``, what Python allocated since warm-up and still
  holds (tracemalloc; it does not see C++ allocations), ``top_growth``: the
  allocation sites (file:line) holding most of it, and ``top_tracebacks``: the
  same by traceback (``LOCAL_MEMORY_TRACE_FRAMES`` frames, default 8; 0 turns
  tracemalloc off: the cheap mode, for runs at the normal rate);
* ``runner_state``: what the local DirectRunner retains per stateful step
  (keys, windows, timers, stored values, holds).

``tracemalloc`` starts only after ``LOCAL_MEMORY_TRACE_WARMUP`` seconds
(default 120): tracing the imports and the pipeline's construction would slow
start-up by minutes, and only memory allocated after warm-up and never freed
matters here. Tracing slows every allocation; use it at low rates. Summarize
a file with ``python -m local.memory_trace FILE``.
"""

from __future__ import annotations

import collections
import ctypes
import gc
import json
import logging
import os
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

_LOG = logging.getLogger(__name__)
_MIB = 2**20


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
            "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def malloc_stats() -> dict[str, float] | None:
    """glibc's heap totals over all arenas, in MiB (None without glibc 2.33+)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    info = fn()
    return {
        "heap_mib": round(info.arena / _MIB, 1),  # obtained with brk/sbrk and arenas
        "in_use_mib": round(info.uordblks / _MIB, 1),
        "free_mib": round(info.fordblks / _MIB, 1),
        "mmapped_mib": round(info.hblkhd / _MIB, 1),
    }


def rss_mib() -> float:
    """This process's resident set size, in MiB (from /proc)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / _MIB


def type_counts() -> tuple[collections.Counter, list[Any]]:
    """Objects the garbage collector tracks, per type name; and the DirectRunner's
    ``EvaluationContext`` objects among them."""
    counts: collections.Counter = collections.Counter()
    contexts = []
    for o in gc.get_objects():
        name = type(o).__qualname__
        counts[name] += 1
        if name == "EvaluationContext" and hasattr(o, "_transform_keyed_states"):
            contexts.append(o)
    return counts, contexts


def _state_sizes(state: Any) -> tuple[int, int, int]:
    """(windows, timers, stored values) of one key's ``InMemoryUnmergedState``."""
    cells = getattr(state, "state", None) or {}
    timers = getattr(state, "timers", None) or {}
    values = 0
    for per_window in cells.values():
        for value in per_window.values():
            values += len(value) if isinstance(value, (list, dict)) else 1
    return len(cells), sum(len(t) for t in timers.values()), values


def _timer_index_sizes(states: Any) -> dict[str, int]:
    """Keys and heap entries in ``local.accelerate_timers``' index of one step (0: none)."""
    index = getattr(states, "timer_index", None)
    if index is None:
        return {"timer_index": 0, "timer_heap": 0}
    return {"timer_index": len(index.entries) + len(index.unknown), "timer_heap": index.heap_size()}


def runner_state(contexts: list[Any], top: int = 12) -> list[dict[str, Any]]:
    """What the local runner retains per stateful step: keys, windows, timers,
    stored values, watermark holds, timers fired but not yet delivered, and
    ``local.accelerate_timers``' index (steps with the most keys first)."""
    out = []
    for ctx in contexts:
        manager = getattr(ctx, "_watermark_manager", None)
        per_step = getattr(manager, "_transform_to_watermarks", {})
        for transform, states in list(ctx._transform_keyed_states.items()):
            if not states:
                continue
            windows = timers = values = 0
            for state in list(states.values()):
                w, t, v = _state_sizes(state)
                windows, timers, values = windows + w, timers + t, values + v
            marks = per_step.get(transform)
            out.append(
                {
                    "step": getattr(transform, "full_label", str(transform)),
                    "keys": len(states),
                    "windows": windows,
                    "timers": timers,
                    "values": values,
                    "holds": len(getattr(marks, "_keyed_earliest_holds", ())),
                    "fired": len(getattr(marks, "_fired_timers", ())),
                    **_timer_index_sizes(states),
                }
            )
    return sorted(out, key=lambda r: -r["keys"])[:top]


def growth(
    snapshot: tracemalloc.Snapshot, baseline: tracemalloc.Snapshot, key: str, top: int
) -> list[dict[str, Any]]:
    """The ``top`` allocation sites (grouped by ``key``) that grew most since ``baseline``."""
    out = []
    for stat in snapshot.compare_to(baseline, key)[:top]:
        if stat.size_diff <= 0:
            break
        # Most recent frame first (a Traceback iterates oldest first).
        frames = [f"{f.filename}:{f.lineno}" for f in reversed(list(stat.traceback))]
        out.append(
            {
                "site": frames[0] if key == "lineno" else frames,
                "size_diff_kib": round(stat.size_diff / 1024, 1),
                "size_kib": round(stat.size / 1024, 1),
                "count_diff": stat.count_diff,
            }
        )
    return out


class MemoryTracer:
    """Samples memory every ``interval`` seconds and appends JSON lines to ``path``."""

    def __init__(self, path: Path, interval: float, warmup: float, frames: int = 8, top: int = 15):
        self.path = path
        self.frames = frames
        self.interval = interval
        self.warmup = warmup
        self.top = top
        self._started = time.monotonic()
        self._baseline: Any = None
        self._baseline_types: collections.Counter | None = None
        self._stop = threading.Event()

    def sample(self) -> dict[str, Any]:
        """One record (and takes the baseline once warm-up is over)."""
        t = time.monotonic() - self._started
        types, contexts = type_counts()
        record: dict[str, Any] = {
            "t": round(t, 1),
            "at": time.time(),
            "rss_mib": round(rss_mib(), 1),
            "malloc": malloc_stats(),
            "gc_objects": sum(types.values()),
            "threads": threading.active_count(),
            "runner_state": runner_state(contexts),
        }
        if self._baseline is None and t >= self.warmup:
            if self.frames:
                tracemalloc.start(self.frames)
            self._baseline = tracemalloc.take_snapshot() if self.frames else True
            self._baseline_types = types
            record["baseline"] = True
        elif self._baseline is not None and tracemalloc.is_tracing():
            traced, peak = tracemalloc.get_traced_memory()
            record["traced_mib"] = round(traced / _MIB, 2)
            record["traced_peak_mib"] = round(peak / _MIB, 2)
            snapshot = tracemalloc.take_snapshot()
            record["top_growth"] = growth(snapshot, self._baseline, "lineno", self.top)
            record["top_tracebacks"] = growth(snapshot, self._baseline, "traceback", 5)
        if self._baseline_types is not None and not record.get("baseline"):
            diff = types.copy()
            diff.subtract(self._baseline_types or {})
            record["type_growth"] = [(n, d) for n, d in diff.most_common(self.top) if d > 0]
        return record

    def run(self) -> None:
        """Samples until ``stop()``; a failing sample is logged, not raised."""
        while not self._stop.wait(self.interval):
            try:
                record = self.sample()
                with open(self.path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            except Exception:  # noqa: BLE001 - dev tooling: never take the pipeline down
                _LOG.exception("memory trace sample failed")

    def stop(self) -> None:
        self._stop.set()


def start_from_env(environ: dict[str, str] | None = None) -> MemoryTracer | None:
    """Starts tracing if ``LOCAL_MEMORY_TRACE`` is set (see the module docstring)."""
    env = os.environ if environ is None else environ
    raw = env.get("LOCAL_MEMORY_TRACE")
    if not raw:
        return None
    try:
        interval = float(raw)
        warmup = float(env.get("LOCAL_MEMORY_TRACE_WARMUP", "120"))
        frames = int(env.get("LOCAL_MEMORY_TRACE_FRAMES", "8"))
    except ValueError as e:
        raise ValueError(f"LOCAL_MEMORY_TRACE*: expected numbers ({e})") from e
    if interval <= 0 or warmup < 0 or frames < 0:
        raise ValueError("LOCAL_MEMORY_TRACE must be > 0 seconds, the warm-up and frames >= 0")
    state_dir = Path(env.get("RUN_LOCAL_STATE_DIR", ".local/run"))
    path = Path(env.get("LOCAL_MEMORY_TRACE_FILE", state_dir / "memory-trace.jsonl"))
    path.parent.mkdir(parents=True, exist_ok=True)
    tracer = MemoryTracer(path, interval, warmup, frames)
    threading.Thread(target=tracer.run, name="memory-trace", daemon=True).start()
    _LOG.info("memory trace every %s s to %s (baseline after %s s)", interval, path, warmup)
    return tracer


def summarize(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """RSS, traced and heap growth from the baseline to the last record."""
    base = next((r for r in lines if r.get("baseline")), None)
    if base is None or base is lines[-1]:
        return {"records": len(lines), "note": "no record after the baseline"}
    last = lines[-1]
    minutes = max((last["t"] - base["t"]) / 60, 1e-9)

    def rate(get) -> float | None:
        a, b = get(base), get(last)
        return None if a is None or b is None else round((b - a) / minutes, 2)

    return {
        "records": len(lines),
        "minutes_after_baseline": round(minutes, 2),
        "rss_mib_per_min": rate(lambda r: r["rss_mib"]),
        "traced_mib_per_min": rate(lambda r: r.get("traced_mib", 0.0)),
        "malloc_in_use_mib_per_min": rate(lambda r: (r.get("malloc") or {}).get("in_use_mib")),
        "malloc_heap_mib_per_min": rate(lambda r: (r.get("malloc") or {}).get("heap_mib")),
        "mmapped_mib_per_min": rate(lambda r: (r.get("malloc") or {}).get("mmapped_mib")),
        "gc_objects_per_min": rate(lambda r: r["gc_objects"]),
        "top_growth": last.get("top_growth", [])[:10],
        "type_growth": last.get("type_growth", [])[:10],
    }


if __name__ == "__main__":
    records = [json.loads(line) for line in Path(sys.argv[1]).read_text().splitlines() if line]
    print(json.dumps(summarize(records), indent=1))
