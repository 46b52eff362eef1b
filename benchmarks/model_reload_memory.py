"""Benchmark: what loading model versions again and again costs in memory.

The streaming pipeline's handler (``model.handler.load_predict_fn``) loads each
promoted version once. This loads versions ``--loads`` times in one process, as a
long-running worker would over as many promotions, and reports the process's
RSS and glibc heap in use (``local.memory_trace.malloc_stats``: it sees
TensorFlow's C++ allocations, which tracemalloc does not) per load, gc-tracked
objects, and how many of the loaded Keras models are still alive afterwards
(weak references; 0 means every replaced model was freed).

    python -m benchmarks.model_reload_memory [--loads 40] [--config configs/traffic.yaml]

Both predict paths are measured: the numpy forward pass that a plain Dense
stack gets, and the TensorFlow ``tf.function`` path of any other model.
Results are appended to ``benchmarks/results/model_reload_memory.jsonl``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import platform
import tempfile
import weakref
from pathlib import Path
from typing import Any

from dataset.config import load_config
from local.memory_trace import malloc_stats, rss_mib

RESULTS = Path(__file__).resolve().parent / "results" / "model_reload_memory.jsonl"


def measure(loads: int, config_path: str, fast_path: bool) -> dict[str, Any]:
    """Loads one version ``loads`` times; memory before and after, per load."""
    import numpy as np

    from model import handler
    from model.features import feature_dim
    from model.keras_model import build_model
    from model.registry import ModelRegistry

    config = load_config(config_path)
    registry = ModelRegistry(tempfile.mkdtemp(prefix="reload-"))
    version = registry.publish(build_model(config), {"note": "reload benchmark"})
    refs: list[weakref.ref] = []
    load_keras = registry.load_keras

    def tracked(v: str):
        model = load_keras(v)
        refs.append(weakref.ref(model))
        return model

    registry.load_keras = tracked  # type: ignore[method-assign]
    numpy_forward = handler.numpy_forward
    if not fast_path:
        handler.numpy_forward = lambda model: None  # force the TensorFlow path
    x = np.zeros((64, feature_dim(config)), np.float32)
    try:
        predict = handler.load_predict_fn(registry, version)  # warm: imports, first trace
        predict(x)
        gc.collect()
        before = (rss_mib(), malloc_stats(), len(gc.get_objects()))
        for _ in range(loads):
            predict = handler.load_predict_fn(registry, version)
            predict(x)
        del predict
        gc.collect()
        after = (rss_mib(), malloc_stats(), len(gc.get_objects()))
    finally:
        handler.numpy_forward = numpy_forward
    in_use = [(m or {}).get("in_use_mib") for m in (before[1], after[1])]
    return {
        "path": "numpy" if fast_path else "tensorflow",
        "loads": loads,
        "rss_mib": [round(before[0], 1), round(after[0], 1)],
        "rss_kib_per_load": round((after[0] - before[0]) * 1024 / loads, 1),
        "malloc_in_use_mib": in_use,
        "malloc_in_use_kib_per_load": (
            round((in_use[1] - in_use[0]) * 1024 / loads, 1) if None not in in_use else None
        ),
        "gc_objects_per_load": round((after[2] - before[2]) / loads, 2),
        "keras_models_alive": sum(r() is not None for r in refs),
        "keras_models_loaded": len(refs),
    }


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.model_reload_memory")
    p.add_argument("--loads", type=int, default=40)
    p.add_argument("--config", default="configs/traffic.yaml")
    args = p.parse_args()
    record = {
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "results": [measure(args.loads, args.config, fast) for fast in (True, False)],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
