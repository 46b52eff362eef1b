"""The model, built from the config's ``model:`` section (``dataset.config.ModelSpec``).

A small Keras network over the encoded feature vector of ``model.features``:
``mlp`` (Dense hidden layers with ReLU; default one layer of 16) or
``linear`` (logistic regression for binary classification, linear regression
otherwise); sigmoid output for binary classification, linear for regression.
Input is the float vector, so serving needs exactly the same
``encode_features`` call as training. ``feature_scaling: standardize`` adds a
``Normalization`` layer that ``fit`` adapts to the training rows; it is part of
the saved model. ``auto`` (the default) adds it only when some numeric feature
has no config min/max, and then standardizes only those columns: the others
are already scaled by ``model.features``, and a window's statistics would
distort them (a clock feature seen over part of its cycle).
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from dataset.config import DatasetConfig, ModelSpec  # noqa: E402
from model.features import HASH_BUCKETS, feature_dim  # noqa: E402
from model.history import history_scaled  # noqa: E402

HIDDEN_UNITS = ModelSpec().hidden_units[0]
MIN_STEPS = ModelSpec().min_steps
MAX_EPOCHS = 200
STEPS_PER_EXECUTION = 25
STANDARDIZE_LAYER = "standardize"
SPEC_ATTRIBUTE = "_training_spec"


def build_model(config: DatasetConfig, seed: int = 0) -> keras.Model:
    """A compiled Keras model for the config's features, task and ``model:`` spec."""
    keras.utils.set_random_seed(seed)
    spec = config.model
    classification = config.label.task == "binary_classification"
    inputs = keras.Input(shape=(feature_dim(config),), name="features")
    x = inputs
    fixed = scaled_columns(config)
    standardize = spec.feature_scaling == "standardize" or (
        spec.feature_scaling == "auto" and not fixed.all()
    )
    if standardize:
        x = keras.layers.Normalization(name=STANDARDIZE_LAYER)(x)
    if spec.architecture == "mlp":
        for i, units in enumerate(spec.hidden_units):
            name = "hidden" if i == 0 else f"hidden{i + 1}"
            x = keras.layers.Dense(units, activation="relu", name=name)(x)
    output = keras.layers.Dense(
        1, activation="sigmoid" if classification else None, name="prediction"
    )(x)
    model = keras.Model(inputs, output, name=f"{config.name}_model")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=spec.learning_rate),
        loss="binary_crossentropy" if classification else "mse",
        metrics=["accuracy"] if classification else ["mae"],
        # Several batches per compiled call: the same updates, far less Keras per-step
        # overhead on the small models and windows of a retrain (benchmarks.freshness).
        steps_per_execution=STEPS_PER_EXECUTION,
    )
    # fit() reads the training settings from here (trainer.task calls fit(model, ...)).
    keep = fixed if spec.feature_scaling == "auto" else np.zeros_like(fixed)
    object.__setattr__(model, SPEC_ATTRIBUTE, (spec, classification, keep))
    return model


def scaled_columns(config: DatasetConfig) -> np.ndarray:
    """Per encoded column: True where ``model.features`` already scales it to [0, 1]
    (one-hot, bool, numbers with a config min and max, ``history_scaled`` history
    features), False for raw numbers."""
    out: list[bool] = []
    for spec in config.features:
        if spec.type == "string":
            out.extend([True] * (len(spec.values) if spec.values else HASH_BUCKETS))
        elif spec.type == "bool":
            out.append(True)
        else:
            out.append(spec.min is not None and spec.max is not None and spec.max > spec.min)
    out.extend(history_scaled(spec, config) for spec in config.history_features)
    return np.asarray(out, dtype=bool)


def class_weights(y: np.ndarray) -> dict[int, float] | None:
    """Inverse-frequency weights for 0/1 labels (mean weight 1); None with one class."""
    positives = float(np.sum(np.asarray(y) >= 0.5))
    n = float(len(y))
    if positives == 0 or positives == n:
        return None
    return {0: n / (2.0 * (n - positives)), 1: n / (2.0 * positives)}


def fit(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    epochs: int = 8,
    batch_size: int | None = None,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
) -> keras.callbacks.History:
    """Trains ``model`` quietly; stops early when validation loss stops improving.

    Settings come from the config's ``model:`` spec the model was built with
    (``epochs`` and ``batch_size`` here apply when the spec leaves them unset).
    Small windows get smaller batches and more epochs, so every run takes at
    least ``min_steps`` gradient steps (800 rows at batch 128 would be ~50).
    """
    spec, classification, keep = getattr(model, SPEC_ATTRIBUTE, (ModelSpec(), False, None))
    if spec.epochs is not None:
        epochs = spec.epochs
    batch_size = batch_size or spec.batch_size
    batch_size = max(16, min(batch_size, len(x) // 25 or 16))
    steps_per_epoch = max(1, math.ceil(len(x) / batch_size))
    epochs = min(MAX_EPOCHS, max(epochs, math.ceil(spec.min_steps / steps_per_epoch)))
    for layer in model.layers:
        if layer.name == STANDARDIZE_LAYER:
            layer.adapt(x)
            if keep is not None and keep.any():  # auto: scaled columns stay as they are
                mean, variance = layer.adapt_mean, layer.adapt_variance
                mean.assign(np.where(keep, 0.0, np.ravel(mean)).reshape(mean.shape))
                variance.assign(np.where(keep, 1.0, np.ravel(variance)).reshape(variance.shape))
                layer.finalize_state()
    callbacks = []
    if validation is not None and spec.early_stopping_patience > 0:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                patience=spec.early_stopping_patience, restore_best_weights=True
            )
        )
    weights = None
    if classification and spec.class_weight == "balanced":
        weights = class_weights(y)
    return model.fit(
        x,
        y,
        epochs=epochs,
        batch_size=batch_size,
        validation_data=validation,
        callbacks=callbacks,
        class_weight=weights,
        verbose=0,
    )
