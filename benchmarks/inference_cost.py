"""Benchmark: what inline inference adds per element, at batch 64, over a no-op.

Two measurements on the traffic model (``model.keras_model.build_model``),
published to a temporary local registry:

* ``handler``: ``RegistryModelHandler.run_inference`` on 64-element batches
  (one model call per batch, numpy rows out: the numpy path this Dense model
  gets, and the traced TensorFlow path other models get) against a no-op
  handler that returns the same ``PredictionResult`` rows without a model; also Beam's
  ``TFModelHandlerNumpy`` on the same model for comparison (one model call,
  then Beam converts the TensorFlow output row by row).
* ``pipeline``: a batch pipeline ``Impulse | FlatMap(pre-built examples) |
  RunInference(handler, batch 64)`` on the FnApiRunner, against the same
  pipeline with the no-op handler, so source and runner costs cancel.

Times are CPU seconds of this process (``time.process_time``, all its threads;
the FnApiRunner runs in-process), which other jobs on a shared machine disturb
far less than wall time. Each figure is the median of ``--repeats`` runs
(pipelines alternate, so drift hits both alike). Results are printed and
written to ``benchmarks/results/inference_cost.json``.

    python -m benchmarks.inference_cost [--elements 12800] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from apache_beam.ml.inference.base import ModelHandler, PredictionResult  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "inference_cost.json"
BATCH = 64


class _NoModel:
    """Stands for a model (Beam's Shared needs an object it can weakly reference)."""


class NoOpHandler(ModelHandler[np.ndarray, PredictionResult, _NoModel]):
    """Same batching, result rows and byte count as the registry handler, no model."""

    def __init__(self):
        super().__init__(min_batch_size=BATCH, max_batch_size=BATCH)

    def load_model(self) -> _NoModel:
        return _NoModel()

    def run_inference(
        self, batch: Sequence[np.ndarray], model: Any, inference_args: Any = None
    ) -> Iterable[PredictionResult]:
        return [PredictionResult(example, example[:1], "v") for example in batch]

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(np.asarray(example).nbytes for example in batch)  # as the registry's


def _examples(n: int) -> list[np.ndarray]:
    from dataset.config import load_config
    from model.features import encode_features
    from simulator.traffic import TrafficSimulator

    config = load_config("configs/traffic.yaml")
    rows = TrafficSimulator(seed=7).history(n, 1_700_000_000.0, rate=10)
    return [encode_features(row, config) for row in rows]


def _per_element_us(fn, batches: list[list[np.ndarray]], repeats: int) -> float:
    fn(batches[0])  # warm-up (tracing, first call)
    times = []
    for _ in range(repeats):
        start = time.process_time()
        for batch in batches:
            fn(batch)
        times.append(time.process_time() - start)
    elements = sum(len(b) for b in batches)
    return statistics.median(times) / elements * 1e6


def _pipeline_run_s(handler: ModelHandler, examples: list[np.ndarray]) -> float:
    import apache_beam as beam
    from apache_beam.ml.inference.base import RunInference
    from apache_beam.options.pipeline_options import PipelineOptions

    options = PipelineOptions(["--runner=FnApiRunner", "--direct_num_workers=1"])
    start = time.process_time()
    with beam.Pipeline(options=options) as p:
        _ = (
            p
            | "Impulse" >> beam.Impulse()
            | "Examples" >> beam.FlatMap(lambda _: examples)
            | "RunInference" >> RunInference(handler)
            | "Drop" >> beam.Filter(lambda _: False)
        )
    return time.process_time() - start


def _pipeline_us(
    handlers: Sequence[ModelHandler], examples: list[np.ndarray], repeats: int
) -> list[float]:
    """Median µs per element of each handler's pipeline; runs alternate, so load
    from other processes on the machine hits both alike. The first round warms up."""
    times: list[list[float]] = [[] for _ in handlers]
    for _ in range(repeats + 1):
        for i, handler in enumerate(handlers):
            times[i].append(_pipeline_run_s(handler, examples))
    return [statistics.median(t[1:]) / len(examples) * 1e6 for t in times]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=BATCH * 200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    from apache_beam.ml.inference.tensorflow_inference import TFModelHandlerNumpy

    from dataset.config import load_config
    from model import handler as handler_module
    from model.handler import RegistryModelHandler
    from model.keras_model import build_model
    from model.registry import ModelRegistry

    config = load_config("configs/traffic.yaml")
    examples = _examples(args.elements)
    batches = [examples[i : i + BATCH] for i in range(0, len(examples), BATCH)]
    with tempfile.TemporaryDirectory() as tmp:
        registry = ModelRegistry(os.path.join(tmp, "registry"))
        version = registry.publish(build_model(config, seed=1), {"note": "benchmark"})
        registry.promote(version)

        ours = RegistryModelHandler(
            registry.root, poll_seconds=3600, min_batch_size=BATCH, max_batch_size=BATCH
        )
        hot = ours.load_model()
        noop = NoOpHandler()
        beam_tf = TFModelHandlerNumpy(registry.keras_path(version))
        beam_model = beam_tf.load_model()

        handler_noop = _per_element_us(lambda b: list(noop.run_inference(b, None)), batches, 5)
        handler_ours = _per_element_us(lambda b: list(ours.run_inference(b, hot)), batches, 5)
        # The same handler with the TensorFlow path (what a non-Dense model gets).
        real_numpy_forward = handler_module.numpy_forward
        handler_module.numpy_forward = lambda model: None
        try:
            hot_tf = ours.load_model()
        finally:
            handler_module.numpy_forward = real_numpy_forward
        handler_tf = _per_element_us(lambda b: list(ours.run_inference(b, hot_tf)), batches, 5)
        handler_beam = _per_element_us(
            lambda b: list(beam_tf.run_inference(b, beam_model)), batches, 5
        )
        pipeline_noop, pipeline_ours = _pipeline_us([noop, ours], examples, args.repeats)

    import apache_beam
    import tensorflow as tf

    result = {
        "batch_size": BATCH,
        "elements": len(examples),
        "repeats": args.repeats,
        "handler_noop_us_per_element": round(handler_noop, 2),
        "handler_registry_us_per_element": round(handler_ours, 2),
        "handler_registry_tf_path_us_per_element": round(handler_tf, 2),
        "handler_beam_tf_numpy_us_per_element": round(handler_beam, 2),
        "inference_us_per_element": round(handler_ours - handler_noop, 2),
        "tf_path_added_us_per_element": round(handler_tf - handler_noop, 2),
        "beam_tf_numpy_added_us_per_element": round(handler_beam - handler_noop, 2),
        "pipeline_noop_us_per_element": round(pipeline_noop, 2),
        "pipeline_registry_us_per_element": round(pipeline_ours, 2),
        "pipeline_added_us_per_element": round(pipeline_ours - pipeline_noop, 2),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "versions": {"apache_beam": apache_beam.__version__, "tensorflow": tf.__version__},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
