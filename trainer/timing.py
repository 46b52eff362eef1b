"""Phase timings of one training run, recorded by the code that does the work.

A ``PhaseTimer`` keeps named, consecutive phases with their wall-clock start
and end (epoch seconds), so a run's timeline can be laid next to times taken
by other processes (the pipeline's trigger row, the launcher's receipt of the
trigger, the registry's promotion, the first prediction by the new version;
``benchmarks.freshness`` does that). Durations come from the same clock.

    timer = PhaseTimer(origin=process_start_time())
    timer.add("interpreter", timer.origin, time.time())   # measured elsewhere
    with timer.phase("read"):
        rows = read(...)
    timer.seconds()   # {"interpreter_s": 1.2, "read_s": 0.3}
    timer.to_dict()   # {"origin": ..., "phases": [{"name", "start", "end", "seconds"}]}
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from typing import Any


@dataclasses.dataclass(frozen=True)
class Phase:
    """One timed phase: wall-clock start and end, epoch seconds."""

    name: str
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start)


def process_start_time(pid: int | None = None) -> float:
    """When process ``pid`` (default: this one) started, epoch seconds (psutil)."""
    import psutil

    return psutil.Process(pid if pid is not None else os.getpid()).create_time()


class PhaseTimer:
    """Named phases of one run, in the order they ran.

    Args:
        origin: epoch seconds the run counts from (default: now); for a
            process of its own, its start time (``process_start_time``).
        clock: wall-clock seconds (tests inject one).
    """

    def __init__(self, origin: float | None = None, clock: Callable[[], float] = time.time):
        self.clock = clock
        self.origin = clock() if origin is None else float(origin)
        self.phases: list[Phase] = []

    def add(self, name: str, start: float, end: float | None = None) -> Phase:
        """Records a phase measured elsewhere (``end`` defaults to now)."""
        if not name or any(p.name == name for p in self.phases):
            raise ValueError(f"phase name must be new and non-empty, got {name!r}")
        phase = Phase(name, float(start), self.clock() if end is None else float(end))
        self.phases.append(phase)
        return phase

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Times the block as phase ``name`` (recorded even if the block raises)."""
        start = self.clock()
        try:
            yield
        finally:
            self.add(name, start)

    def seconds(self) -> dict[str, float]:
        """``{"<name>_s": seconds}`` in phase order, rounded to milliseconds."""
        return {f"{p.name}_s": round(p.seconds, 3) for p in self.phases}

    def total_s(self) -> float:
        """Seconds from ``origin`` to now."""
        return round(max(0.0, self.clock() - self.origin), 3)

    def to_dict(self) -> dict[str, Any]:
        """The timeline: ``origin`` and each phase's start, end and seconds."""
        return {
            "origin": round(self.origin, 3),
            "phases": [
                {
                    "name": p.name,
                    "start": round(p.start, 3),
                    "end": round(p.end, 3),
                    "seconds": round(p.seconds, 3),
                }
                for p in self.phases
            ],
        }

    def summary(self) -> str:
        """One log line: ``name 1.23s, ...``."""
        return ", ".join(f"{p.name} {p.seconds:.2f}s" for p in self.phases)
