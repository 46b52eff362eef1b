"""Promotion gates: a candidate version is promoted only if every gate passes.

The TFX pattern: an *InfraValidator* (``infra_check``: can the exported model
be loaded and served?) and an *Evaluator* with a baseline (``quality_check``:
is it good enough, and not worse than the model serving now?).

``infra_check`` loads the version exactly as the consumers do: ``model.keras``
through ``ModelRegistry.load_keras`` (what the serving model handler loads) and
the SavedModel through ``tf.saved_model.load`` (what TF Serving / Vertex AI
load; a ``gs://`` registry's files are downloaded first), requires a
``serving_default`` signature, runs both on sample rows and checks the
outputs are finite, of shape ``(n, 1)`` (or ``(n,)``), in [0, 1] for a
classifier, and that the two artifacts agree. All of that must finish within
``time_limit_s``, or the gate fails (the load keeps running in a daemon thread,
but the decision is made).

``quality_check`` compares metrics the caller computed on the *same* held-out
rows for the candidate and the current model (``current_model_metrics``
loads the current version from the registry and evaluates it there). Rules:

* binary classification: held-out ``accuracy >= policy.min_accuracy``; without
  a ``min_accuracy`` the candidate must beat the constant predictor
  (``accuracy > baseline_accuracy`` or ``log_loss < baseline_log_loss``);
  against the current model: ``accuracy >= current accuracy - max_quality_drop``
  (absolute accuracy points);
* regression: ``rmse < baseline_rmse`` (beats predicting the mean label);
  against the current model: ``rmse <= current rmse * (1 + max_quality_drop)``
  (a relative increase);
* no current model (the first version), or a current model that cannot be
  evaluated on these rows: the comparison is skipped with a pass, and the
  reason says so.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from model.registry import SAVED_MODEL_DIR

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SERVING_SIGNATURE = "serving_default"
ENCODED_SIGNATURE = "serving_encoded"
AGREEMENT_TOLERANCE = 1e-3


@dataclasses.dataclass(frozen=True)
class GateResult:
    """One gate's decision.

    Attributes:
        name: ``infra`` or ``quality``.
        passed: whether the candidate passed.
        reasons: human-readable findings (why it failed, or what was checked).
        details: numbers behind the decision (JSON-serialisable).
    """

    name: str
    passed: bool
    reasons: list[str]
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- infra


def _check_outputs(what: str, y: Any, n: int, task: str | None, reasons: list[str]) -> np.ndarray:
    arr = np.asarray(y)
    if arr.shape not in ((n, 1), (n,)):
        reasons.append(f"{what}: output shape {arr.shape}, expected ({n}, 1)")
        return arr
    if not np.issubdtype(arr.dtype, np.number):
        reasons.append(f"{what}: non-numeric output dtype {arr.dtype}")
        return arr
    bad = int(np.sum(~np.isfinite(arr)))
    if bad:
        reasons.append(f"{what}: {bad} of {arr.size} outputs are NaN or infinite")
    elif task == "binary_classification" and (arr.min() < 0.0 or arr.max() > 1.0):
        reasons.append(f"{what}: outputs outside [0, 1] (min {arr.min():.4g}, max {arr.max():.4g})")
    return arr.reshape(n)


def _infra_steps(registry, version: str, x: np.ndarray, task: str | None) -> dict[str, Any]:
    """Loads and runs both artifacts; returns reasons and details."""
    import tensorflow as tf

    reasons: list[str] = []
    details: dict[str, Any] = {"rows": int(len(x))}
    keras_out = saved_out = None

    t0 = time.monotonic()
    try:
        model = registry.load_keras(version)
        details["keras_load_s"] = round(time.monotonic() - t0, 3)
        t1 = time.monotonic()
        y = model.predict(x, verbose=0)
        details["keras_predict_s"] = round(time.monotonic() - t1, 3)
        keras_out = _check_outputs("model.keras", y, len(x), task, reasons)
    except Exception as e:  # noqa: BLE001 - any failure to load/run is the finding
        reasons.append(f"model.keras does not load or predict: {type(e).__name__}: {e}")

    t0 = time.monotonic()
    try:
        # Through the registry's storage (gs:// is downloaded first), like the handler.
        with registry.local_artifacts(version) as local:
            loaded = tf.saved_model.load(os.path.join(local, SAVED_MODEL_DIR))
        details["saved_model_load_s"] = round(time.monotonic() - t0, 3)
        signatures = sorted(loaded.signatures.keys())
        details["signatures"] = signatures
        if SERVING_SIGNATURE not in loaded.signatures:
            reasons.append(
                f"SavedModel has no '{SERVING_SIGNATURE}' signature (found: {signatures or 'none'})"
            )
        else:
            # A raw-feature export (model.export) serves the encoded vector as
            # 'serving_encoded'; export_saved_model checked the raw signature against it.
            vector = ENCODED_SIGNATURE if ENCODED_SIGNATURE in loaded.signatures else None
            fn = loaded.signatures[vector or SERVING_SIGNATURE]
            _, kwargs = fn.structured_input_signature
            if len(kwargs) != 1:
                reasons.append(
                    f"'{SERVING_SIGNATURE}' takes {len(kwargs)} inputs ({sorted(kwargs)}), "
                    "expected one feature vector"
                )
            else:
                ((name, spec),) = kwargs.items()
                details["signature_input"] = {"name": name, "shape": spec.shape.as_list()}
                t1 = time.monotonic()
                outputs = fn(**{name: tf.constant(x, dtype=spec.dtype)})
                details["saved_model_predict_s"] = round(time.monotonic() - t1, 3)
                if len(outputs) != 1:
                    reasons.append(
                        f"'{SERVING_SIGNATURE}' returns {len(outputs)} outputs, expected one"
                    )
                else:
                    (out,) = outputs.values()
                    saved_out = _check_outputs("SavedModel", out.numpy(), len(x), task, reasons)
    except Exception as e:  # noqa: BLE001
        reasons.append(f"SavedModel does not load or serve: {type(e).__name__}: {e}")

    if (
        keras_out is not None
        and saved_out is not None
        and keras_out.shape == saved_out.shape == (len(x),)
        and np.all(np.isfinite(keras_out))
        and np.all(np.isfinite(saved_out))
    ):
        diff = float(np.max(np.abs(keras_out - saved_out))) if len(x) else 0.0
        details["max_artifact_difference"] = diff
        if diff > AGREEMENT_TOLERANCE:
            reasons.append(
                f"model.keras and the SavedModel disagree by up to {diff:.4g} "
                f"(tolerance {AGREEMENT_TOLERANCE:g})"
            )
    return {"reasons": reasons, "details": details}


def infra_check(
    registry,
    version: str,
    sample_x: np.ndarray,
    time_limit_s: float = 30.0,
    task: str | None = None,
) -> GateResult:
    """Whether ``version`` loads and serves (InfraValidator).

    Args:
        registry: a ``model.registry.ModelRegistry``.
        version: the candidate version.
        sample_x: encoded sample rows, shape (n, feature_dim), n >= 1.
        time_limit_s: loading and predicting with both artifacts must finish
            within this many seconds.
        task: the config's task; ``binary_classification`` also requires
            outputs in [0, 1].

    Returns:
        ``GateResult("infra", ...)``; ``details`` has load/predict timings.
    """
    x = np.asarray(sample_x, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        return GateResult("infra", False, [f"need sample rows of shape (n, dim), got {x.shape}"])
    started = time.monotonic()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="infra-check")
    future = pool.submit(_infra_steps, registry, version, x, task)
    try:
        outcome = future.result(timeout=time_limit_s)
    except concurrent.futures.TimeoutError:
        pool.shutdown(wait=False, cancel_futures=True)
        return GateResult(
            "infra",
            False,
            [f"loading and serving {version} took longer than {time_limit_s:g}s"],
            {"time_limit_s": time_limit_s},
        )
    except Exception as e:  # noqa: BLE001
        pool.shutdown(wait=False)
        return GateResult("infra", False, [f"infra check crashed: {type(e).__name__}: {e}"])
    pool.shutdown(wait=False)
    elapsed = time.monotonic() - started
    reasons = list(outcome["reasons"])
    details = dict(outcome["details"], elapsed_s=round(elapsed, 3), time_limit_s=time_limit_s)
    if not reasons and elapsed > time_limit_s:
        reasons.append(f"took {elapsed:.1f}s, over the {time_limit_s:g}s limit")
    if reasons:
        return GateResult("infra", False, reasons, details)
    return GateResult(
        "infra",
        True,
        [
            f"model.keras and SavedModel '{SERVING_SIGNATURE}' load and predict finite outputs "
            f"for {len(x)} rows in {elapsed:.1f}s"
        ],
        details,
    )


# ------------------------------------------------------------------------- quality


def _number(metrics: Mapping[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def current_model_metrics(
    registry, x: np.ndarray, y: np.ndarray, task: str
) -> tuple[str | None, dict[str, Any] | None, str | None]:
    """Evaluates the registry's current model on the candidate's held-out rows.

    Returns:
        ``(version, metrics, error)``: ``(None, None, None)`` without a current
        version; ``(version, None, why)`` when it cannot be loaded or evaluated
        (e.g. a different feature width after a config change).
    """
    from trainer.metrics import evaluate

    version = registry.current_version()
    if version is None:
        return None, None, None
    try:
        model = registry.load_keras(version)
        return version, evaluate(model, x, y, task), None
    except Exception as e:  # noqa: BLE001 - reported, the comparison is skipped
        return version, None, f"{type(e).__name__}: {e}"


def quality_check(
    candidate_metrics: Mapping[str, Any],
    current_metrics: Mapping[str, Any] | None,
    policy,
    task: str,
) -> GateResult:
    """Whether the candidate is good enough and not worse than the current model (Evaluator).

    Args:
        candidate_metrics: ``trainer.metrics.evaluate`` of the candidate on the
            held-out rows.
        current_metrics: the current model's metrics on the *same* rows, or None
            (first model, or the current model could not be evaluated).
        policy: the config's ``RetrainingPolicy`` (``min_accuracy``, ``max_quality_drop``).
        task: ``binary_classification`` or ``regression``.
    """
    reasons: list[str] = []
    details: dict[str, Any] = {"task": task, "max_quality_drop": policy.max_quality_drop}
    passed = True
    if task == "binary_classification":
        metric, higher_is_better = "accuracy", True
        value = _number(candidate_metrics, "accuracy")
        details["candidate_accuracy"] = value
        if value is None:
            return GateResult("quality", False, ["candidate has no finite accuracy"], details)
        if policy.min_accuracy is not None:
            details["min_accuracy"] = policy.min_accuracy
            if value < policy.min_accuracy:
                passed = False
                reasons.append(f"accuracy {value:.4f} is below the floor {policy.min_accuracy:.4f}")
            else:
                reasons.append(f"accuracy {value:.4f} >= floor {policy.min_accuracy:.4f}")
        else:
            base_acc = _number(candidate_metrics, "baseline_accuracy")
            loss = _number(candidate_metrics, "log_loss")
            base_loss = _number(candidate_metrics, "baseline_log_loss")
            beats = (base_acc is not None and value > base_acc) or (
                loss is not None and base_loss is not None and loss < base_loss
            )
            details.update(baseline_accuracy=base_acc, log_loss=loss, baseline_log_loss=base_loss)
            if not beats:
                passed = False
                reasons.append(
                    f"accuracy {value:.4f} / log loss {loss} do not beat the constant "
                    f"predictor ({base_acc} / {base_loss})"
                )
            else:
                reasons.append("beats the constant predictor (no min_accuracy configured)")
    elif task == "regression":
        metric, higher_is_better = "rmse", False
        value = _number(candidate_metrics, "rmse")
        base = _number(candidate_metrics, "baseline_rmse")
        details.update(candidate_rmse=value, baseline_rmse=base)
        if value is None:
            return GateResult("quality", False, ["candidate has no finite rmse"], details)
        if base is not None and not value < base:
            passed = False
            reasons.append(f"rmse {value:.4g} does not beat the mean-label baseline {base:.4g}")
        else:
            reasons.append(f"rmse {value:.4g} beats the mean-label baseline {base}")
    else:
        raise ValueError(f"unknown task {task!r}")

    if current_metrics is None:
        reasons.append("no current model to compare with: comparison skipped")
        details["compared"] = False
        return GateResult("quality", passed, reasons, details)

    current = _number(current_metrics, metric)
    details.update(compared=True, **{f"current_{metric}": current})
    if current is None:
        reasons.append(f"current model has no finite {metric}: comparison skipped")
        return GateResult("quality", passed, reasons, details)
    drop = policy.max_quality_drop
    if higher_is_better:
        limit = current - drop
        ok = value >= limit
        comparison = f"{metric} {value:.4f} vs current {current:.4f} (allowed drop {drop:g})"
    else:
        limit = current * (1.0 + drop)
        ok = value <= limit
        comparison = f"{metric} {value:.4g} vs current {current:.4g} (allowed +{drop:.0%})"
    details["limit"] = limit
    if ok:
        reasons.append(f"not worse than the current model: {comparison}")
    else:
        passed = False
        reasons.append(f"worse than the current model on the same rows: {comparison}")
    return GateResult("quality", passed, reasons, details)
