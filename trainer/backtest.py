"""Prequential policy backtest: replay history through the loop's own decisions.

``run_policy`` replays a ``trainer.backtest_replay.Replay`` in event-time
order. Every feature row is first predicted by the model serving at its event
time, then, when its label lands, becomes a training row. The retraining
decisions are the live system's code, called as pure functions:

* triggers: ``transforms.triggers`` (``add_examples`` per landed example,
  ``decide``, ``fire``; the quality trigger from ``quality_alarm`` on quality
  windows of ``evaluation_window_seconds`` of label-landing time per model
  version, built with ``transforms.quality``'s accumulators);
* the training window: the newest ``training_window_rows`` landed rows by
  event time (``trainer.data.select_window``'s rule);
* a run: ``trainer.validation.validate`` (against the serving model's
  statistics), ``trainer.data.split_by_time``, ``trainer.task``'s model
  training (``model.keras_model``, warm start), ``trainer.metrics.evaluate``
  of the candidate and the current model on the same held-out rows, and
  ``trainer.gates.quality_check``. The infra gate (SavedModel export and
  reload) is not run: an in-process model always serves.

A model trained at event time ``t`` serves from ``t + training_delay_seconds``.
Events at one instant run predictions before label landings, so a row is
never predicted by a model that saw its label (``audit=True`` records each
model's training example ids to check it).

The first model is trained on the warm-up rows whose label landed by the end
of the warm-up and serves from the last warm-up row on; every policy starts
from it, and the ``static`` baseline keeps it.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import sys
import time
import types
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from dataset.config import DatasetConfig, RetrainingPolicy
from trainer.backtest_replay import Replay
from trainer.validation import MIN_ROWS

Predict = Callable[[np.ndarray], np.ndarray]
Progress = Callable[[str, int, int, dict[str, Any]], None]


@dataclasses.dataclass(frozen=True)
class BacktestOptions:
    """Settings of a backtest that are not in the dataset config.

    Attributes:
        training_delay_seconds: event time between a trigger and its model serving.
        seed: the model seed of every run (``trainer.task --seed``).
        epochs: ``trainer.task --epochs``.
        min_rows: the trainer's ``too_few_rows`` floor (``trainer.task --min-rows``).
        audit: keep each model's training example ids (for leakage checks).
    """

    training_delay_seconds: float = 60.0
    seed: int = 0
    epochs: int = 8
    min_rows: int = MIN_ROWS
    audit: bool = False


@dataclasses.dataclass
class ServedModel:
    """A model version of the backtest."""

    version: str
    model: Any
    predict: Predict
    statistics: dict[str, Any] | None
    trained_at: float
    serves_from: float
    label_cutoff: float  # the latest label landing among its training rows
    example_ids: frozenset[str] | None = None


@dataclasses.dataclass
class PolicyRun:
    """One policy's replay: predictions of the scored rows and what happened."""

    name: str
    policy: RetrainingPolicy
    predictions: np.ndarray  # one per replay row (NaN: not predicted)
    versions: list[str | None]
    models: dict[str, ServedModel]
    triggers: list[dict[str, Any]]
    runs: list[dict[str, Any]]
    train_seconds: float = 0.0

    @property
    def promotions(self) -> int:
        return sum(1 for r in self.runs if r["promoted"])

    @property
    def rejections(self) -> int:
        return sum(1 for r in self.runs if not r["promoted"])


class _Registry:
    """The in-memory stand-in for ``model.registry.ModelRegistry`` that the trainer's
    warm start and ``gates.current_model_metrics`` use."""

    def __init__(self) -> None:
        self.models: dict[str, ServedModel] = {}
        self.current: str | None = None

    def current_version(self) -> str | None:
        return self.current

    def load_keras(self, version: str) -> Any:
        served = self.models[version]
        return _FastPredict(served.model, served.predict)


class _FastPredict:
    """A Keras model whose ``predict`` is one ``predict_fn`` call (no Keras predict loop)."""

    def __init__(self, model: Any, predict: Predict):
        self._model = model
        self._predict = predict

    def predict(self, x: np.ndarray, *args: Any, **kwargs: Any) -> np.ndarray:
        return self._predict(np.asarray(x, dtype=np.float32))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def predict_fn(model: Any) -> Predict:
    """A fast single-batch predict: ``model.handler.numpy_forward`` for Dense stacks
    (as the serving handler does), else the Keras model called directly."""
    from model.handler import numpy_forward

    fast = numpy_forward(model)
    if fast is not None:
        return fast

    def slow(x: np.ndarray) -> np.ndarray:
        return np.asarray(model(x, training=False))

    return slow


def train_model(config: DatasetConfig, rows: list[dict], opts: BacktestOptions, registry=None):
    """``trainer.task``'s model training (same code path: build, warm start, early stopping)."""
    from trainer.task import _train

    task_opts = types.SimpleNamespace(seed=opts.seed, epochs=opts.epochs)
    registry = registry or _Registry()
    model, _, _ = _train(config, rows, registry, task_opts, registry.current_version())
    return model


def first_model(config: DatasetConfig, replay: Replay, opts: BacktestOptions) -> ServedModel:
    """The model trained on the warm-up rows (the ``static`` baseline; every policy's start).

    Raises:
        ValueError: if no warm-up row has a label by the end of the warm-up.
    """
    from trainer.validation import validate

    idx = replay.bootstrap_indexes()
    if replay.warmup_rows >= replay.rows:
        raise ValueError(
            f"no rows left after the warm-up ({replay.warmup_rows} rows up to the last warm-up "
            "label); use a smaller warm-up fraction or a longer file"
        )
    if not idx:
        raise ValueError(
            f"none of the {replay.warmup_rows} warm-up rows has a label by the end of the "
            "warm-up; use a larger warm-up fraction"
        )
    rows = [replay.training_rows[i] for i in idx]
    model = train_model(config, rows, opts)
    return ServedModel(
        version="v0001",
        model=model,
        predict=predict_fn(model),
        statistics=validate(rows, config, min_rows=0).statistics,
        trained_at=replay.warmup_end,
        serves_from=replay.warmup_end,
        label_cutoff=float(max(replay.land_times[i] for i in idx)),
        example_ids=frozenset(replay.example_ids[i] for i in idx) if opts.audit else None,
    )


def _training_run(
    config: DatasetConfig,
    policy: RetrainingPolicy,
    window: list[dict],
    registry: _Registry,
    opts: BacktestOptions,
) -> tuple[bool, Any, dict[str, Any] | None, list[str]]:
    """One trainer run on ``window``: (promoted, model, statistics, reasons)."""
    from model.features import encode_batch, label_array
    from trainer import data as data_lib
    from trainer import gates
    from trainer.metrics import evaluate
    from trainer.validation import validate

    current = registry.models.get(registry.current) if registry.current else None
    result = validate(
        window, config, current.statistics if current else None, min_rows=opts.min_rows
    )
    if not result.ok:
        return False, None, None, [f"data validation: {result.summary()}"]
    try:
        train_rows, val_rows = data_lib.split_by_time(window, policy.validation_fraction)
    except ValueError as e:
        return False, None, None, [f"split: {e}"]
    cfg = dataclasses.replace(config, retraining=policy)
    model = train_model(cfg, train_rows, opts, registry)
    task = config.label.task
    x_val, y_val = encode_batch(val_rows, config), label_array(val_rows, config)
    metrics = evaluate(_FastPredict(model, predict_fn(model)), x_val, y_val, task)
    _, current_metrics, _ = gates.current_model_metrics(registry, x_val, y_val, task)
    quality = gates.quality_check(metrics, current_metrics, policy, task)
    return quality.passed, model, result.statistics, list(quality.reasons)


class _QualityWindows:
    """Online quality per (landing-time window, model version), like ``MeasureOnlineQuality``."""

    def __init__(self, seconds: int, classification: bool):
        self.seconds = seconds
        self.classification = classification
        self.open: dict[tuple[float, str], list] = {}

    def add(self, land_time: float, version: str, prediction: float, label: float) -> None:
        from transforms.quality import add_scored, empty_quality

        start = math.floor(land_time / self.seconds) * self.seconds
        acc = self.open.setdefault((start, version), empty_quality())
        add_scored(acc, prediction, label, self.classification)

    def close_before(self, now: float) -> list[dict[str, Any]]:
        """Quality rows of the windows that ended at or before ``now``."""
        from transforms.quality import quality_metrics

        done = sorted(k for k in self.open if k[0] + self.seconds <= now)
        return [
            dict(quality_metrics(self.open.pop(k), self.classification), model_version=k[1])
            for k in done
        ]


def _events(replay: Replay) -> list[tuple[float, int, int]]:
    """(time, kind, row): kind 0 predicts, kind 1 lands a label; predictions first at a tie."""
    events = [(float(t), 0, i) for i, t in enumerate(replay.times)]
    events.extend((float(t), 1, i) for i, t in enumerate(replay.land_times) if not math.isnan(t))
    events.sort()
    return events


def run_policy(
    name: str,
    config: DatasetConfig,
    policy: RetrainingPolicy,
    replay: Replay,
    first: ServedModel,
    opts: BacktestOptions,
    progress: Progress | None = None,
) -> PolicyRun:
    """Replays ``replay`` under ``policy`` (see the module docstring)."""
    from transforms.triggers import TriggerState, add_examples, decide, fire, quality_alarm

    classification = config.label.task == "binary_classification"
    registry = _Registry()
    registry.models[first.version] = first
    registry.current = first.version
    serving = first
    pending: list[ServedModel] = []  # promoted, not serving yet (ordered by serves_from)
    state = TriggerState(epoch="backtest")
    quality = _QualityWindows(config.evaluation_window_seconds, classification)
    bootstrap = set(replay.bootstrap_indexes())
    # Landed rows ordered by (event time, example id): the trainer's window order.
    order = sorted(bootstrap, key=lambda i: (float(replay.times[i]), replay.example_ids[i]))
    landed_keys = [(float(replay.times[i]), replay.example_ids[i]) for i in order]
    landed_rows = [replay.training_rows[i] for i in order]
    state.total = len(landed_rows)
    n = replay.rows
    predictions = np.full(n, np.nan)
    versions: list[str | None] = [None] * n
    triggers: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    train_seconds = 0.0
    events = _events(replay)
    step = max(1, len(events) // 50)
    for count, (t, kind, i) in enumerate(events):
        if progress is not None and count % step == 0:
            progress(name, count, len(events), {"retrains": len(runs)})
        while pending and pending[0].serves_from <= t:
            serving = pending.pop(0)
        if kind == 0:
            if i >= replay.warmup_rows:
                predictions[i] = float(np.ravel(serving.predict(replay.x[i : i + 1]))[0])
                versions[i] = serving.version
            continue
        if i in bootstrap:
            continue
        key = (float(replay.times[i]), replay.example_ids[i])
        at = bisect.bisect_left(landed_keys, key)
        landed_keys.insert(at, key)
        landed_rows.insert(at, replay.training_rows[i])
        add_examples(state, 1, key[0], key[0])
        if versions[i] is not None:
            quality.add(t, versions[i], predictions[i], float(replay.labels[i]))
        for row in quality.close_before(t):
            if state.quality_alarm is None and quality_alarm(row, policy):
                state.quality_alarm = row
        reason = decide(state, policy)
        if reason is None:
            continue
        trigger = fire(state, config.name, reason, t)
        triggers.append(trigger)
        window = landed_rows[-policy.training_window_rows :]
        started = time.monotonic()
        promoted, model, statistics, reasons = _training_run(config, policy, window, registry, opts)
        train_seconds += time.monotonic() - started
        version = f"v{len(runs) + 2:04d}"
        run = {
            "version": version,
            "trigger": reason,
            "trained_at": t,
            "serves_from": t + opts.training_delay_seconds,
            "rows": len(window),
            "promoted": promoted,
            "reasons": reasons,
        }
        runs.append(run)
        if promoted:
            served = ServedModel(
                version=version,
                model=model,
                predict=predict_fn(model),
                statistics=statistics,
                trained_at=t,
                serves_from=t + opts.training_delay_seconds,
                label_cutoff=max(r["ingested_at"].timestamp() for r in window),
                example_ids=(
                    frozenset(str(r["example_id"]) for r in window) if opts.audit else None
                ),
            )
            registry.models[version] = served
            registry.current = version
            pending.append(served)
    if progress is not None:
        progress(name, len(events), len(events), {"retrains": len(runs)})
    models = dict(registry.models) if opts.audit else {}
    return PolicyRun(name, policy, predictions, versions, models, triggers, runs, train_seconds)


# ------------------------------------------------------------------------ scoring


def baselines(replay: Replay, classification: bool) -> dict[str, np.ndarray]:
    """Per-row predictions of ``no_change`` and ``majority``, from labels landed before.

    ``no_change``: the latest label of the same key that landed before the row
    was predicted (none yet: the majority); ``majority``: the majority class of
    the labels landed so far (regression: their mean).
    """
    n = replay.rows
    no_change = np.full(n, np.nan)
    majority = np.full(n, np.nan)
    last: dict[str, float] = {}
    total, positives = 0, 0.0
    for _, kind, i in _events(replay):
        if kind == 1:
            last[replay.keys[i]] = float(replay.labels[i])
            total += 1
            positives += float(replay.labels[i])
            continue
        if classification:
            current = 1.0 if total and positives / total >= 0.5 else 0.0
        else:
            current = positives / total if total else 0.0
        majority[i] = current
        no_change[i] = last.get(replay.keys[i], current)
    return {"no_change": no_change, "majority": majority}


def score(
    labels: np.ndarray,
    predictions: np.ndarray,
    reference: np.ndarray,
    classification: bool,
    probabilistic: bool = True,
) -> dict[str, Any]:
    """Test-then-train metrics; ``reference`` is the no-change prediction (kappa temporal)."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(predictions, dtype=np.float64)
    out: dict[str, Any] = {"rows_scored": int(len(y))}
    if not len(y):
        return out
    if classification:
        accuracy = float(np.mean((p >= 0.5) == (y >= 0.5)))
        reference_accuracy = float(np.mean((reference >= 0.5) == (y >= 0.5)))
        out["accuracy"] = accuracy
        out["kappa_temporal"] = (
            (accuracy - reference_accuracy) / (1.0 - reference_accuracy)
            if reference_accuracy < 1.0
            else None
        )
        if probabilistic:
            q = np.clip(p, 1e-7, 1 - 1e-7)
            out["log_loss"] = float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))
        else:
            out["log_loss"] = None  # a hard 0/1 guess has no meaningful log loss
        return out
    err = p - y
    out["mae"] = float(np.mean(np.abs(err)))
    out["rmse"] = float(math.sqrt(np.mean(err**2)))
    reference_mae = float(np.mean(np.abs(reference - y)))
    out["kappa_temporal"] = 1.0 - out["mae"] / reference_mae if reference_mae > 0 else None
    out["log_loss"] = None
    return out


def quality_series(
    times: np.ndarray, labels: np.ndarray, predictions: np.ndarray, classification: bool, bins: int
) -> tuple[np.ndarray, np.ndarray]:
    """(bin centre times, accuracy or MAE per bin) of scored rows, for the plot."""
    if not len(times):
        return np.zeros(0), np.zeros(0)
    edges = np.linspace(times.min(), times.max() + 1e-9, bins + 1)
    which = np.clip(np.digitize(times, edges) - 1, 0, bins - 1)
    centres, values = [], []
    for b in range(bins):
        mask = which == b
        if not mask.any():
            continue
        centres.append((edges[b] + edges[b + 1]) / 2)
        if classification:
            values.append(float(np.mean((predictions[mask] >= 0.5) == (labels[mask] >= 0.5))))
        else:
            values.append(float(np.mean(np.abs(predictions[mask] - labels[mask]))))
    return np.asarray(centres), np.asarray(values)


def rejection_kind(reasons: list[str]) -> str:
    """Why a run was refused, in a word: the first failing check of its reasons."""
    kinds = (
        ("data validation", "data_validation"),
        ("split:", "split"),
        ("below the floor", "min_accuracy"),
        ("do not beat", "constant_predictor"),
        ("does not beat", "mean_baseline"),
        ("worse than the current", "worse_than_current"),
        ("no finite", "no_metric"),
    )
    for reason in reasons:
        for text, kind in kinds:
            if text in reason:
                return kind
    return "other"


def policy_summary(run: PolicyRun, replay: Replay, reference: np.ndarray, classification: bool):
    """A ``results.json`` ``policies`` entry for one run."""
    idx = replay.scored_indexes()
    out = {
        "name": run.name,
        **score(replay.labels[idx], run.predictions[idx], reference[idx], classification),
        "retrains": len(run.runs),
        "promotions": run.promotions,
        "rejections": run.rejections,
        "triggers": dict(Counter(t["reason"] for t in run.triggers)),
        "rejection_reasons": dict(
            Counter(rejection_kind(r["reasons"]) for r in run.runs if not r["promoted"])
        ),
        "train_seconds": round(run.train_seconds, 1),
        "settings": {
            "min_new_examples": run.policy.min_new_examples,
            "training_window_rows": run.policy.training_window_rows,
            "min_interval_seconds": run.policy.min_interval_seconds,
            "max_interval_seconds": run.policy.max_interval_seconds,
            "quality_floor": run.policy.quality_floor,
        },
    }
    if not classification:
        out.pop("accuracy", None)
    return out


def stderr_progress(name: str, done: int, total: int, info: dict[str, Any]) -> None:
    """A progress bar on stderr: redrawn in place on a terminal, a line per 10% otherwise."""
    width = 30
    share = done / total if total else 1.0
    filled = int(width * share)
    bar = "#" * filled + "." * (width - filled)
    text = f"[backtest] {name:<24} [{bar}] {share:4.0%} retrains {info.get('retrains', 0)}"
    if sys.stderr.isatty():
        print("\r" + text, end="\n" if done >= total else "", file=sys.stderr, flush=True)
        return
    step = max(1, total // 10)
    if done >= total or done % step < max(1, total // 50):
        print(text, file=sys.stderr, flush=True)
