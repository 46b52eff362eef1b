"""The first model: deliberately simple ("keep the first model simple").

A small Keras MLP over the encoded feature vector of ``model.features``:
one hidden layer, sigmoid output for binary classification, linear output
for regression. Input is the float vector, so serving needs exactly the same
``encode_features`` call as training.
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from dataset.config import DatasetConfig  # noqa: E402
from model.features import feature_dim  # noqa: E402

HIDDEN_UNITS = 16
MIN_STEPS = 600
MAX_EPOCHS = 200


def build_model(config: DatasetConfig, seed: int = 0) -> keras.Model:
    """A compiled Keras model for the config's features and task."""
    keras.utils.set_random_seed(seed)
    classification = config.label.task == "binary_classification"
    inputs = keras.Input(shape=(feature_dim(config),), name="features")
    hidden = keras.layers.Dense(HIDDEN_UNITS, activation="relu", name="hidden")(inputs)
    output = keras.layers.Dense(
        1, activation="sigmoid" if classification else None, name="prediction"
    )(hidden)
    model = keras.Model(inputs, output, name=f"{config.name}_model")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=0.01),
        loss="binary_crossentropy" if classification else "mse",
        metrics=["accuracy"] if classification else ["mae"],
    )
    return model


def fit(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    epochs: int = 8,
    batch_size: int = 128,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
) -> keras.callbacks.History:
    """Trains ``model`` quietly; stops early when validation loss stops improving.

    Small windows get smaller batches and more epochs, so every run takes at
    least ``MIN_STEPS`` gradient steps (800 rows at batch 128 would be ~50).
    """
    batch_size = max(16, min(batch_size, len(x) // 25 or 16))
    steps_per_epoch = max(1, math.ceil(len(x) / batch_size))
    epochs = min(MAX_EPOCHS, max(epochs, math.ceil(MIN_STEPS / steps_per_epoch)))
    callbacks = []
    if validation is not None:
        callbacks.append(keras.callbacks.EarlyStopping(patience=3, restore_best_weights=True))
    return model.fit(
        x,
        y,
        epochs=epochs,
        batch_size=batch_size,
        validation_data=validation,
        callbacks=callbacks,
        verbose=0,
    )
