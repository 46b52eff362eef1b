"""The SavedModel a version ships for TF Serving / Vertex AI: raw features in.

``export_saved_model`` writes a SavedModel with two signatures:

* ``serving_default``: one named input per config feature, a batch of scalars
  of the feature's type (``int`` -> ``int64``, ``float`` -> ``float32``,
  ``string`` -> ``string``, ``bool`` -> ``bool``), each shaped ``[None]``.
  The graph applies ``model.features.encode_features``'s encoding in
  TensorFlow ops (``encode_tf``: min/max scaling with clipping, 0/1 for bools,
  one-hot over allowed values, one-hot over CRC-32 buckets for free strings)
  and then the Keras model. Output ``{"prediction": [None, 1]}``. An endpoint
  can therefore be called with the fields an event carries, e.g. Vertex AI
  ``{"instances": [{"vehicle_count": 12, "road_type": "local", ...}]}``.
  Each of the config's ``history_features`` is one more ``float32`` ``[None]``
  input (the value ``model.history`` computed; NaN: no history, encoded as
  ``model.history.history_default``).
* ``serving_encoded``: the encoded vector ``features`` ``[None, dim]`` (what
  ``RunInference`` feeds the Keras model), output ``{"prediction": ...}``.

Like ``encode_features``, the graph does not validate: out-of-range numbers
are clipped and unknown categories encode as all zeros. Validate first (the
online service does, with ``transforms.validation``).

After writing, ``export_saved_model`` loads the SavedModel back and checks
that ``serving_default`` on probe rows spanning every feature's domain gives
the same scores as ``encode_batch`` + the Keras model (``check_export``); a
mismatch raises, so no version with a skewed signature is published.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from dataset.config import DatasetConfig, FeatureSpec
from model.features import HASH_BUCKETS, encode_batch

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

RAW_SIGNATURE = "serving_default"
ENCODED_SIGNATURE = "serving_encoded"
OUTPUT = "prediction"
ENCODED_INPUT = "features"
EXPORT_TOLERANCE = 1e-5
PROBE_ROWS = 64


def _crc_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.int64)
    for n in range(256):
        c = n
        for _ in range(8):
            c = (0xEDB88320 ^ (c >> 1)) if c & 1 else c >> 1
        table[n] = c
    return table


def input_dtype(spec: FeatureSpec) -> tf.DType:
    """The TensorFlow type of a feature's signature input."""
    import tensorflow as tf

    return {"int": tf.int64, "float": tf.float32, "string": tf.string, "bool": tf.bool}[spec.type]


def input_signature(config: DatasetConfig) -> dict[str, tf.TensorSpec]:
    """``serving_default``'s inputs: one ``[None]`` tensor per feature, by name."""
    import tensorflow as tf

    inputs = {
        spec.name: tf.TensorSpec([None], input_dtype(spec), name=spec.name)
        for spec in config.features
    }
    for spec in config.history_features:
        inputs[spec.name] = tf.TensorSpec([None], tf.float32, name=spec.name)
    return inputs


def crc32_tf(values: tf.Tensor) -> tf.Tensor:
    """``zlib.crc32`` of each string of a ``[n]`` string tensor, as int64 ``[n]``."""
    import tensorflow as tf

    table = tf.constant(_crc_table())
    lengths = tf.cast(tf.strings.length(values), tf.int64)
    width = tf.maximum(tf.cast(tf.reduce_max(tf.concat([lengths, [0]], 0)), tf.int32), 1)
    codes = tf.transpose(tf.cast(tf.io.decode_raw(values, tf.uint8, fixed_length=width), tf.int64))
    mask32 = tf.constant(0xFFFFFFFF, tf.int64)

    def step(i, crc):
        index = tf.bitwise.bitwise_and(tf.bitwise.bitwise_xor(crc, codes[i]), 255)
        updated = tf.bitwise.bitwise_xor(tf.gather(table, index), tf.bitwise.right_shift(crc, 8))
        return i + 1, tf.where(tf.cast(i, tf.int64) < lengths, updated, crc)

    _, crc = tf.while_loop(
        lambda i, _: i < width, step, (tf.constant(0), tf.fill(tf.shape(values), mask32))
    )
    return tf.bitwise.bitwise_xor(crc, mask32)


def _encode_column(spec: FeatureSpec, x: tf.Tensor) -> tf.Tensor:
    import tensorflow as tf

    if spec.type == "string":
        if spec.values:
            allowed = tf.constant(list(spec.values))
            return tf.cast(tf.equal(x[:, None], allowed[None, :]), tf.float32)
        bucket = tf.math.floormod(crc32_tf(x), HASH_BUCKETS)
        return tf.one_hot(bucket, HASH_BUCKETS, dtype=tf.float32)
    if spec.type == "bool":
        return tf.cast(x, tf.float32)[:, None]
    value = tf.cast(x, tf.float64)
    if spec.min is not None and spec.max is not None and spec.max > spec.min:
        value = (tf.clip_by_value(value, spec.min, spec.max) - spec.min) / (spec.max - spec.min)
    return tf.cast(value, tf.float32)[:, None]


def encode_tf(features: Mapping[str, tf.Tensor], config: DatasetConfig) -> tf.Tensor:
    """``encode_batch`` in TensorFlow ops: ``{name: [n]}`` -> float32 ``[n, dim]``."""
    import tensorflow as tf

    columns = [_encode_column(spec, features[spec.name]) for spec in config.features]
    for spec in config.history_features:
        columns.append(_encode_history_tf(spec, features[spec.name], config))
    return tf.concat(columns, axis=1)


def _encode_history_tf(spec, x: tf.Tensor, config: DatasetConfig) -> tf.Tensor:
    """``model.history.encode_history_value`` in TensorFlow ops (NaN: missing)."""
    import tensorflow as tf

    from model.history import history_default, history_range

    value = tf.cast(x, tf.float64)
    lo, hi = history_range(spec, config)
    if lo is not None and hi is not None and hi > lo:
        value = (tf.clip_by_value(value, lo, hi) - lo) / (hi - lo)
    default = tf.constant(history_default(spec, config), tf.float64)
    value = tf.where(tf.math.is_nan(value), default, value)
    return tf.cast(value, tf.float32)[:, None]


def probe_rows(config: DatasetConfig, n: int = PROBE_ROWS, seed: int = 0) -> list[dict[str, Any]]:
    """Deterministic feature rows across every feature's domain (and past its bounds)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        row: dict[str, Any] = {}
        for spec in config.features:
            if spec.type == "bool":
                row[spec.name] = bool(i % 2)
            elif spec.type == "string":
                choices = list(spec.values or ()) + [f"other-{i}", "", "é-ü"]
                row[spec.name] = choices[int(rng.integers(0, len(choices)))]
            else:
                lo = spec.min if spec.min is not None else -1000.0
                hi = spec.max if spec.max is not None else 1000.0
                span = max(hi - lo, 1.0)
                value = rng.uniform(lo - 0.1 * span, hi + 0.1 * span)
                row[spec.name] = int(round(value)) if spec.type == "int" else float(value)
        for spec in config.history_features:  # missing (None) every third row
            row[spec.name] = None if i % 3 == 0 else float(rng.uniform(-1.0, 2.0))
        rows.append(row)
    return rows


def raw_inputs(rows: list[Mapping[str, Any]], config: DatasetConfig) -> dict[str, tf.Tensor]:
    """Feature rows as ``serving_default``'s named input tensors."""
    import tensorflow as tf

    inputs = {
        spec.name: tf.constant([row[spec.name] for row in rows], dtype=input_dtype(spec))
        for spec in config.features
    }
    for spec in config.history_features:
        values = [float("nan") if row.get(spec.name) is None else row[spec.name] for row in rows]
        inputs[spec.name] = tf.constant(values, dtype=tf.float32)
    return inputs


def check_export(path: str, model: keras.Model, config: DatasetConfig) -> float:
    """Loads the SavedModel at ``path``; both signatures must match the Keras model.

    Returns:
        The largest absolute difference seen.

    Raises:
        ValueError: if a signature is missing or disagrees beyond ``EXPORT_TOLERANCE``.
    """
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    missing = {RAW_SIGNATURE, ENCODED_SIGNATURE} - set(loaded.signatures)
    if missing:
        raise ValueError(f"SavedModel {path} lacks signatures {sorted(missing)}")
    rows = probe_rows(config)
    encoded = encode_batch(rows, config)
    expected = np.asarray(model(encoded, training=False)).reshape(-1)
    raw = loaded.signatures[RAW_SIGNATURE](**raw_inputs(rows, config))[OUTPUT].numpy()
    vector = loaded.signatures[ENCODED_SIGNATURE](**{ENCODED_INPUT: tf.constant(encoded)})
    worst = 0.0
    for name, got in ((RAW_SIGNATURE, raw), (ENCODED_SIGNATURE, vector[OUTPUT].numpy())):
        diff = float(np.max(np.abs(got.reshape(-1) - expected)))
        worst = max(worst, diff)
        if not diff <= EXPORT_TOLERANCE:
            raise ValueError(
                f"SavedModel signature {name!r} disagrees with encode_features + Keras by "
                f"{diff:.3g} (tolerance {EXPORT_TOLERANCE:g})"
            )
    return worst


def export_saved_model(model: keras.Model, path: str, config: DatasetConfig) -> None:
    """Writes the raw-feature SavedModel of ``model`` for ``config`` to ``path``, checked.

    Raises:
        ValueError: if the model's input width is not the config's feature width,
            or the written SavedModel does not reproduce the Keras scores.
    """
    import keras
    import tensorflow as tf

    from model.features import feature_dim

    dim = feature_dim(config)
    width = int(model.inputs[0].shape[-1])
    if width != dim:
        raise ValueError(
            f"model input width {width} is not config {config.name!r}'s feature width {dim}"
        )

    def serve_raw(features):
        return {OUTPUT: model(encode_tf(features, config), training=False)}

    def serve_encoded(features):
        return {OUTPUT: model(features, training=False)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(RAW_SIGNATURE, serve_raw, input_signature=[input_signature(config)])
    archive.add_endpoint(
        ENCODED_SIGNATURE,
        serve_encoded,
        input_signature=[tf.TensorSpec([None, dim], tf.float32, name=ENCODED_INPUT)],
    )
    archive.write_out(os.fspath(path), verbose=False)
    check_export(os.fspath(path), model, config)
