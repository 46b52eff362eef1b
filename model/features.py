"""The one feature function: record features -> model input vector.

Training, streaming inference, batch serving and the backtest all call
``encode_features``/``encode_batch`` so there is no training/serving skew.
The encoding depends only on the dataset config:

* numeric (int/float): scaled to [0, 1] with the config's min/max when both
  are set (clipped), else passed through;
* bool: 0/1;
* string with allowed ``values``: one-hot, in the config's order;
* string without ``values``: one-hot over ``HASH_BUCKETS`` stable hash buckets;
* then the config's ``history_features``, in the config's order, one position
  each (``model.history.encode_history_value``: scaled like the source, the
  default of ``history_default`` when the value is missing). Their values are
  the row's own columns: a serving record passes ``model_inputs(record)``
  (features plus ``record["history"]``), a training row carries them as
  columns, so both encode to the same vector.

``encode_batch`` also takes a column-wise table (``trainer.data.RowTable``:
anything with ``column(name)`` returning an Arrow array): number, bool and
string columns without NULLs are then encoded a column at a time, to the very
same vectors; other columns go value by value through the same rules.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from dataset.config import DatasetConfig, FeatureSpec
from model.history import encode_history_value

if TYPE_CHECKING:
    import pyarrow as pa

HASH_BUCKETS = 16


def _width(spec: FeatureSpec) -> int:
    if spec.type == "string":
        return len(spec.values) if spec.values else HASH_BUCKETS
    return 1


def feature_dim(config: DatasetConfig) -> int:
    """Length of the encoded feature vector."""
    return sum(_width(spec) for spec in config.features) + len(config.history_features)


def feature_columns(config: DatasetConfig) -> list[str]:
    """A name per vector position (for debugging and feature importance)."""
    names: list[str] = []
    for spec in config.features:
        if spec.type == "string":
            labels = spec.values or tuple(f"bucket{i}" for i in range(HASH_BUCKETS))
            names.extend(f"{spec.name}={v}" for v in labels)
        else:
            names.append(spec.name)
    names.extend(spec.name for spec in config.history_features)
    return names


def model_inputs(record: Mapping[str, Any]) -> dict[str, Any]:
    """What a validated record encodes from: its features and its history values."""
    return {**record["features"], **(record.get("history") or {})}


def _encode_into(out: np.ndarray, offset: int, spec: FeatureSpec, value: Any) -> int:
    if spec.type == "string":
        if spec.values:
            if value in spec.values:
                out[offset + spec.values.index(value)] = 1.0
        else:
            out[offset + zlib.crc32(str(value).encode()) % HASH_BUCKETS] = 1.0
        return offset + _width(spec)
    if spec.type == "bool":
        out[offset] = 1.0 if value else 0.0
        return offset + 1
    x = float(value)
    if spec.min is not None and spec.max is not None and spec.max > spec.min:
        x = (min(max(x, spec.min), spec.max) - spec.min) / (spec.max - spec.min)
    out[offset] = x
    return offset + 1


def encode_features(features: Mapping[str, Any], config: DatasetConfig) -> np.ndarray:
    """Encodes one record's (validated) features as a float32 vector.

    History features are read by name too (absent or None: the default).

    Raises:
        KeyError: if a configured feature is missing (records are validated first).
    """
    out = np.zeros(feature_dim(config), dtype=np.float32)
    offset = 0
    for spec in config.features:
        offset = _encode_into(out, offset, spec, features[spec.name])
    for spec in config.history_features:
        out[offset] = encode_history_value(spec, features.get(spec.name), config)
        offset += 1
    return out


@runtime_checkable
class Columns(Protocol):
    """Rows held column-wise (``trainer.data.RowTable``)."""

    def __len__(self) -> int: ...

    def column(self, name: str) -> pa.Array | None: ...


def _numbers(values: pa.Array | None) -> np.ndarray | None:
    """An Arrow int/float/bool column without NULLs as float64 (None otherwise)."""
    import pyarrow as pa  # only here: serving and the pipeline never load Arrow for this

    if values is None or values.null_count:
        return None
    kind = values.type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
        return None
    return values.to_numpy(zero_copy_only=False).astype(np.float64)


def _encode_column(
    out: np.ndarray, offset: int, spec: FeatureSpec, values: pa.Array | None
) -> bool:
    """``_encode_into`` for a whole column; False when the column needs the per-value path."""
    import pyarrow as pa

    if values is None or values.null_count:
        return False
    if spec.type == "string":
        if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
            return False
        encoded = values.dictionary_encode()
        words = encoded.dictionary.to_pylist()
        if spec.values:
            slots = np.asarray(
                [spec.values.index(w) if w in spec.values else -1 for w in words], dtype=np.int64
            )
        else:
            slots = np.asarray(
                [zlib.crc32(str(w).encode()) % HASH_BUCKETS for w in words], dtype=np.int64
            )
        slot = slots[encoded.indices.to_numpy(zero_copy_only=False)]
        hit = np.flatnonzero(slot >= 0)
        out[hit, offset + slot[hit]] = 1.0
        return True
    x = _numbers(values)
    if x is None:
        return False
    if spec.type == "bool":
        out[:, offset] = np.where(x != 0, 1.0, 0.0)
        return True
    if spec.min is not None and spec.max is not None and spec.max > spec.min:
        x = np.where(spec.min > x, spec.min, x)  # max(x, min), as the per-value rule
        x = np.where(spec.max < x, spec.max, x)  # min(x, max)
        x = (x - spec.min) / (spec.max - spec.min)
    out[:, offset] = x
    return True


def _encode_columns(rows: Columns, config: DatasetConfig) -> np.ndarray:
    n = len(rows)
    out = np.zeros((n, feature_dim(config)), dtype=np.float32)
    offset = 0
    for spec in config.features:
        values = rows.column(spec.name)
        if values is None:
            raise KeyError(spec.name)  # as encode_features: features are validated first
        if not _encode_column(out, offset, spec, values):
            for i, value in enumerate(values.to_pylist()):
                _encode_into(out[i], offset, spec, value)
        offset += _width(spec)
    for spec in config.history_features:
        values = rows.column(spec.name)
        column = [None] * n if values is None else values.to_pylist()
        out[:, offset] = [encode_history_value(spec, v, config) for v in column]
        offset += 1
    return out


def encode_batch(rows: Iterable[Mapping[str, Any]], config: DatasetConfig) -> np.ndarray:
    """Encodes many rows (dicts with the feature columns, or ``Columns``) as an (n, dim) array."""
    if isinstance(rows, Columns):
        return _encode_columns(rows, config)
    vectors = [encode_features(row, config) for row in rows]
    if not vectors:
        return np.zeros((0, feature_dim(config)), dtype=np.float32)
    return np.stack(vectors)


def label_array(rows: Iterable[Mapping[str, Any]], config: DatasetConfig) -> np.ndarray:
    """The label column of ``rows`` as float32 (bool/int labels become 0/1)."""
    if isinstance(rows, Columns):
        values = _numbers(rows.column(config.label.field))
        if values is not None:
            return values.astype(np.float32)
    return np.asarray([float(row[config.label.field]) for row in rows], dtype=np.float32)
