"""Inline predictions with the registry's current model, keyed, with dead letters.

Each valid feature record is encoded with the same feature function the
trainer uses (``model.features.encode_features`` of ``model_inputs``: its
features and, with ``history_features``, the values ``AttachHistory`` put in
``record["history"]``, which its training row stores too), predicted by
``RunInference`` with ``RegistryModelHandler`` (keyed, batched, hot-swapping)
and written as a prediction row that carries the key, event time and the model
version that scored it (``PredictionResult.model_id``). Inference latency and
batch sizes are Beam's own RunInference metrics; metric names are fixed (the
version is in the rows, never in a metric name). Failed preprocessing or
inference goes to the dead-letter table; before the first model exists,
records are skipped and counted (``inference/examples_without_model``).
"""

from __future__ import annotations

import datetime as dt
import traceback
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import (
    KeyedModelHandler,
    ModelHandler,
    PredictionResult,
    RunInference,
)
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import TimestampedValue

from dataset.config import DatasetConfig
from dataset.times import utc_iso
from model.features import encode_features, model_inputs
from model.handler import RegistryModelHandler
from transforms.validation import Record, dead_letter_row

NAMESPACE = "inference"
STEP = "PredictAndRecord"

# (example_id, entity key, event time seconds, inline label or None): travels
# with the example through RunInference.
ExampleKey = tuple[str, str, float, Any]
SCORED = "scored"


def example_key(record: Record) -> ExampleKey:
    """The key a prediction keeps: example id (join id or message id), entity, time,
    and the label when it came with the features (inline labels)."""
    return (
        record["join_id"] or record["message_id"],
        record["key"],
        record["event_time"],
        record["label"],
    )


def prediction_row(
    config: DatasetConfig, key: ExampleKey, result: PredictionResult, now: float | None = None
) -> dict[str, Any] | None:
    """A prediction-table row, or None when no model was available (cold start)."""
    version = result.model_id
    if version is None or result.inference is None:
        return None
    value = float(np.asarray(result.inference).reshape(-1)[0])
    example_id, entity, event_time = key[:3]
    predicted_label = None
    if config.label.task == "binary_classification":
        predicted_label = int(value >= 0.5)
    if now is None:
        now = dt.datetime.now(dt.UTC).timestamp()
    return {
        "example_id": example_id,
        config.key_field: entity,
        "event_time": utc_iso(event_time),
        "prediction": value,
        "predicted_label": predicted_label,
        "model_version": version,
        "predicted_at": utc_iso(now),
    }


class _FormatPredictionFn(beam.DoFn):
    def __init__(self, config: DatasetConfig):
        self._config = config
        self._predictions = Metrics.counter(NAMESPACE, "predictions")
        self._skipped = Metrics.counter(NAMESPACE, "predictions_skipped_no_model")
        self._lag = Metrics.distribution(NAMESPACE, "event_to_prediction_ms")

    def process(self, element):
        key, result = element
        row = prediction_row(self._config, key, result)
        if row is None:
            self._skipped.inc()
            return
        self._predictions.inc()
        self._lag.update(int((dt.datetime.now(dt.UTC).timestamp() - key[2]) * 1000))
        # Batching may move timestamps; predictions live at their event time.
        yield TimestampedValue(row, key[2])
        label = key[3]
        if label is not None:  # inline label: score now, no join needed
            scored = (row["model_version"], (row["prediction"], float(label)))
            yield TaggedOutput(SCORED, TimestampedValue(scored, key[2]))


def _failed_rows(failure, step: str) -> list[dict]:
    """Dead-letter rows for a failed batch ``(elements, exception)`` or element."""
    elements, error = failure
    if not isinstance(elements, list):
        elements = [elements]
    rows = []
    for element in elements:
        key = element[0] if isinstance(element, tuple) else ("", "", 0.0)
        rows.append(
            dead_letter_row(
                repr(element)[:10000],
                {"example_id": str(key[0])},
                f"{type(error).__name__}: {error}",
                step,
                "".join(traceback.format_exception(error))[-4000:],
                message_id=str(key[0]),
            )
        )
    return rows


class PredictAndRecord(beam.PTransform):
    """Feature records -> prediction rows, dead-letter rows and, for inline
    labels, ``scored`` ``(model_version, (prediction, label))`` pairs."""

    def __init__(
        self,
        config: DatasetConfig,
        registry_root: str,
        poll_seconds: float = 10.0,
        max_batch_size: int = 64,
        max_batch_duration_secs: int | None = None,
    ):
        super().__init__()
        self._config = config
        self._registry_root = registry_root
        self._poll_seconds = poll_seconds
        self._max_batch_size = max_batch_size
        self._max_batch_duration_secs = max_batch_duration_secs

    def base_handler(self) -> ModelHandler:
        """The unkeyed model handler: the registry's current version, hot-swapped."""
        return RegistryModelHandler(
            self._registry_root,
            self._poll_seconds,
            min_batch_size=1,
            max_batch_size=self._max_batch_size,
            max_batch_duration_secs=self._max_batch_duration_secs or None,
        )

    def handler(self) -> KeyedModelHandler:
        """``base_handler`` keyed by example, encoding each instance's features first."""
        config = self._config
        return KeyedModelHandler(self.base_handler()).with_preprocess_fn(
            lambda element: (element[0], encode_features(element[1], config))
        )

    def expand(self, records):
        config = self._config
        keyed = records | "KeyByExample" >> beam.Map(lambda r: (example_key(r), model_inputs(r)))
        results, failures = (
            keyed | "RunInference" >> RunInference(self.handler()).with_exception_handling()
        )
        formatted = results | "FormatPredictions" >> beam.ParDo(
            _FormatPredictionFn(config)
        ).with_outputs(SCORED, main="predictions")
        failed = [failures.failed_inferences, *failures.failed_preprocessing]
        failed.extend(failures.failed_postprocessing)
        dead = (
            failed
            | "FlattenInferenceFailures" >> beam.Flatten()
            | "InferenceFailuresToDeadLetter" >> beam.FlatMap(_failed_rows, STEP)
        )
        return {
            "predictions": formatted.predictions,
            SCORED: formatted[SCORED],
            "dead_letter": dead,
        }
