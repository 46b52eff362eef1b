"""Progressive validation: score every prediction when its label lands.

Predictions and training examples share ``example_id`` (the join id, or the
message id for inline labels). A stateful DoFn keyed by it holds whichever
side came first until the other arrives (or the label's max delay plus
``JOIN_EXPIRY_SLACK_SECONDS`` passes), then emits
``(model_version, prediction, label)``. The slack matters: a negative made on
timeout carries the event time T + max delay, exactly when a join without
slack would expire, so without it whether that negative is scored would
depend on which timer the runner fires first. These are windowed by the
time the label landed and combined per model version into quality rows:
count, accuracy, log loss, Brier score, mean prediction vs base rate
(calibration) for classification; MAE and RMSE for regression. This is the
online-quality signal for drift triggers and automatic rollback.

Quality windows fire ON_TIME when the watermark passes their end; late scored
pairs (within one window of lateness) update them in accumulating LATE panes,
at most one per ``LATE_FIRING_DELAY_SECONDS`` of processing time per model
version and window. ``pane_index`` numbers a window's panes: readers take the
highest.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger, window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Timestamp

from dataset.config import DatasetConfig
from dataset.times import utc_iso
from transforms.aggregation import late_firing_trigger, pane_timing

NAMESPACE = "quality"
EPS = 1e-7
# Event time a half-joined prediction/label waits beyond the label's max delay.
JOIN_EXPIRY_SLACK_SECONDS = 60
# Processing-time delay between a quality window's first late pair and its LATE
# pane (short: the rollback monitor and quality triggers read these rows).
LATE_FIRING_DELAY_SECONDS = 10
# Accumulator: [n, correct, log_loss, brier, prediction_sum, label_sum, abs_err, sq_err]
QualityAcc = list


def empty_quality() -> QualityAcc:
    return [0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def add_scored(
    acc: QualityAcc, prediction: float, label: float, classification: bool
) -> QualityAcc:
    acc[0] += 1
    acc[4] += prediction
    acc[5] += label
    err = prediction - label
    acc[6] += abs(err)
    acc[7] += err * err
    if classification:
        p = min(max(prediction, EPS), 1 - EPS)
        acc[1] += int((prediction >= 0.5) == (label >= 0.5))
        acc[2] += -(label * math.log(p) + (1 - label) * math.log(1 - p))
        acc[3] += err * err
    return acc


def merge_quality(accs) -> QualityAcc:
    out = empty_quality()
    for acc in accs:
        for i, value in enumerate(acc):
            out[i] += value
    return out


def quality_metrics(acc: QualityAcc, classification: bool) -> dict[str, Any]:
    """Quality columns from an accumulator."""
    n = acc[0]
    if n == 0:
        return {"examples": 0}
    out: dict[str, Any] = {
        "examples": n,
        "mean_prediction": acc[4] / n,
        "base_rate": acc[5] / n,
        "mae": acc[6] / n,
        "rmse": math.sqrt(acc[7] / n),
        "accuracy": None,
        "log_loss": None,
        "brier": None,
    }
    if classification:
        out.update({"accuracy": acc[1] / n, "log_loss": acc[2] / n, "brier": acc[3] / n})
    return out


class QualityFn(beam.CombineFn):
    def __init__(self, classification: bool):
        self._classification = classification

    def create_accumulator(self):
        return empty_quality()

    def add_input(self, acc, scored):
        prediction, label = scored
        return add_scored(acc, prediction, label, self._classification)

    def merge_accumulators(self, accs):
        return merge_quality(accs)

    def extract_output(self, acc):
        return quality_metrics(acc, self._classification)


class _JoinPredictionLabelFn(beam.DoFn):
    """Keyed by example id: ('prediction', row) and ('label', row) -> scored pair."""

    PREDICTION = ReadModifyWriteStateSpec("prediction", PickleCoder())
    LABEL = ReadModifyWriteStateSpec("label", PickleCoder())
    EXPIRY = TimerSpec("expiry", TimeDomain.WATERMARK)

    def __init__(self, label_field: str, wait_seconds: int):
        self._label_field = label_field
        self._wait = wait_seconds
        self._scored = Metrics.counter(NAMESPACE, "predictions_scored")
        self._unlabeled = Metrics.counter(NAMESPACE, "predictions_never_labeled")
        self._unpredicted = Metrics.counter(NAMESPACE, "labels_without_prediction")

    def process(
        self,
        element,
        prediction_state=beam.DoFn.StateParam(PREDICTION),
        label_state=beam.DoFn.StateParam(LABEL),
        expiry=beam.DoFn.TimerParam(EXPIRY),
        timestamp=beam.DoFn.TimestampParam,
    ):
        _, (side, row) = element
        if side == "prediction":
            prediction, label = row, label_state.read()
            prediction_state.write(row)
        else:
            prediction, label = prediction_state.read(), row
            label_state.write(row)
        if prediction is not None and label is not None:
            self._scored.inc()
            prediction_state.clear()
            label_state.clear()
            yield (
                prediction["model_version"],
                (float(prediction["prediction"]), float(label[self._label_field])),
            )
            return
        expiry.set(Timestamp.of(float(timestamp) + self._wait))

    @on_timer(EXPIRY)
    def expire(
        self,
        prediction_state=beam.DoFn.StateParam(PREDICTION),
        label_state=beam.DoFn.StateParam(LABEL),
    ):
        if prediction_state.read() is not None:
            self._unlabeled.inc()
        if label_state.read() is not None:
            self._unpredicted.inc()
        prediction_state.clear()
        label_state.clear()


class _FormatQualityFn(beam.DoFn):
    def process(self, element, win=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam):
        version, metrics = element
        yield {
            "window_start": utc_iso(float(win.start)),
            "window_end": utc_iso(float(win.end)),
            "model_version": version,
            **metrics,
            "pane_timing": pane_timing(pane),
            "pane_index": pane.index,
            "computed_at": utc_iso(dt.datetime.now(dt.UTC).timestamp()),
        }


class JoinPredictionsWithLabels(beam.PTransform):
    """(prediction rows, training example rows) -> ``(model_version, (prediction, label))``.

    For labels that arrive in their own, later message. (Inline labels are
    scored by ``PredictAndRecord`` directly: no state needed.)
    """

    def __init__(self, config: DatasetConfig):
        super().__init__()
        self._config = config

    def expand(self, pcolls):
        predictions, examples = pcolls
        cfg = self._config
        wait = cfg.label.max_delay_seconds + JOIN_EXPIRY_SLACK_SECONDS
        tagged_predictions = predictions | "TagPredictions" >> beam.Map(
            lambda r: (r["example_id"], ("prediction", r))
        )
        tagged_labels = examples | "TagLabels" >> beam.Map(
            lambda r: (r["example_id"], ("label", r))
        )
        return (
            (tagged_predictions, tagged_labels)
            | "FlattenPredictionsAndLabels" >> beam.Flatten()
            | "JoinPredictionWithLabel" >> beam.ParDo(_JoinPredictionLabelFn(cfg.label.field, wait))
        )


class MeasureOnlineQuality(beam.PTransform):
    """``(model_version, (prediction, label))`` -> per-window, per-version quality rows."""

    def __init__(self, config: DatasetConfig, window_seconds: int):
        super().__init__()
        self._config = config
        self._window_seconds = window_seconds

    def expand(self, scored):
        cfg = self._config
        return (
            scored
            | "QualityWindow"
            >> beam.WindowInto(
                window.FixedWindows(self._window_seconds),
                trigger=late_firing_trigger(LATE_FIRING_DELAY_SECONDS),
                accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
                allowed_lateness=self._window_seconds,
            )
            | "QualityPerVersion"
            >> beam.CombinePerKey(QualityFn(cfg.label.task == "binary_classification"))
            | "FormatQuality" >> beam.ParDo(_FormatQualityFn())
            | "RewindowQuality" >> beam.WindowInto(window.GlobalWindows())
        )
