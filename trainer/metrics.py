"""Validation metrics shared by the bootstrap trainer and the continuous trainer.

``metrics_from_predictions`` is a pure numpy function of labels and
predictions; ``evaluate`` runs a model's ``predict`` and calls it. Every
value is a plain float/int (or None when undefined, e.g. AUC with one class),
so the result can go straight into registry metadata / JSON.

Binary classification: ``accuracy`` (threshold 0.5), ``log_loss``, ``auc``,
``base_rate`` (mean label), ``mean_prediction``, and the constant-predictor
baselines ``baseline_accuracy`` (always the majority class) and
``baseline_log_loss`` (always the base rate), plus ``rows``.

Regression: ``mae``, ``rmse``, ``mean_label``, ``mean_prediction`` and the
baselines ``baseline_mae``/``baseline_rmse`` (always the mean label), plus ``rows``.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

TASKS = ("binary_classification", "regression")
_EPS = 1e-7


class Predictor(Protocol):
    """Anything with a Keras-style ``predict``."""

    def predict(self, x: np.ndarray, *args: Any, **kwargs: Any) -> Any: ...


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, _EPS, 1.0 - _EPS)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


def roc_auc(y: np.ndarray, p: np.ndarray) -> float | None:
    """Area under the ROC curve (rank statistic, ties averaged); None with one class."""
    y = np.asarray(y, dtype=np.float64).ravel() > 0.5
    p = np.asarray(p, dtype=np.float64).ravel()
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(p, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based, ties averaged
    ranks = average_rank[inverse]
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def metrics_from_predictions(y_true: np.ndarray, y_pred: np.ndarray, task: str) -> dict[str, Any]:
    """Metrics for predictions ``y_pred`` of labels ``y_true`` (pure function).

    Args:
        y_true: labels, shape (n,) or (n, 1); 0/1 for binary classification.
        y_pred: predictions, same length; probabilities for binary classification.
        task: ``binary_classification`` or ``regression``.

    Raises:
        ValueError: for an unknown task, empty input or mismatched lengths.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r} (expected one of {', '.join(TASKS)})")
    y = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    if len(y) == 0:
        raise ValueError("cannot evaluate on zero rows")
    if len(y) != len(p):
        raise ValueError(f"{len(y)} labels but {len(p)} predictions")
    if not np.all(np.isfinite(p)):
        raise ValueError("predictions contain NaN or infinity")
    if task == "binary_classification":
        base_rate = float(y.mean())
        return {
            "rows": len(y),
            "accuracy": float(np.mean((p >= 0.5) == (y >= 0.5))),
            "log_loss": _log_loss(y, p),
            "auc": roc_auc(y, p),
            "base_rate": base_rate,
            "mean_prediction": float(p.mean()),
            "baseline_accuracy": max(base_rate, 1.0 - base_rate),
            "baseline_log_loss": _log_loss(y, np.full_like(y, base_rate)),
        }
    err = p - y
    mean_label = float(y.mean())
    return {
        "rows": len(y),
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mean_label": mean_label,
        "mean_prediction": float(p.mean()),
        "baseline_mae": float(np.mean(np.abs(y - mean_label))),
        "baseline_rmse": float(np.sqrt(np.mean((y - mean_label) ** 2))),
    }


def evaluate(model: Predictor, x: np.ndarray, y: np.ndarray, task: str) -> dict[str, Any]:
    """Runs ``model.predict(x)`` and returns ``metrics_from_predictions(y, ., task)``.

    Args:
        model: a Keras model (or anything with ``predict``).
        x: encoded features, shape (n, feature_dim).
        y: labels, shape (n,).
        task: ``binary_classification`` or ``regression``.

    Raises:
        ValueError: for an unknown task or empty input.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r} (expected one of {', '.join(TASKS)})")
    if len(x) == 0:
        raise ValueError("cannot evaluate on zero rows")
    predictions = model.predict(x, batch_size=4096, verbose=0)
    return metrics_from_predictions(y, predictions, task)
