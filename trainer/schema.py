"""The expected data as a ``tensorflow_metadata`` ``Schema``, derived from the config.

``schema_from_config`` builds the proto (TFX's schema, without TFDV, which does
not install next to TensorFlow 2.21); the helpers read it and check one scalar
value against a feature's type and domain. Shared by ``trainer.statistics``
and ``trainer.validation``. Pure functions.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from tensorflow_metadata.proto.v0 import schema_pb2

from dataset.config import DatasetConfig

TRAINING_ENV = "TRAINING"
SERVING_ENV = "SERVING"

# ----------------------------------------------------------------------------- schema


def schema_from_config(config: DatasetConfig) -> schema_pb2.Schema:
    """The tensorflow-metadata schema of a training batch, derived from the config.

    One ``Feature`` per config feature (``INT`` for int and bool with a
    ``bool_domain``, ``FLOAT``, ``BYTES`` for strings), with its domain (int/float
    min/max, allowed strings), ``presence.min_fraction = 1.0`` and
    ``value_count`` min = max = 1, and a ``drift_comparator`` from
    ``retraining.drift_threshold`` (Jensen-Shannon for numeric features,
    L-infinity for categorical ones) unless the feature sets ``drift_check: false``
    (a clock feature such as hour_of_day shifts between windows by design). The
    label is a feature too, in the ``TRAINING`` environment only
    (``not_in_environment: SERVING``), as in TFX.
    """
    schema = schema_pb2.Schema()
    schema.default_environment.extend([TRAINING_ENV, SERVING_ENV])
    threshold = config.retraining.drift_threshold
    for spec in config.features:
        feature = schema.feature.add()
        feature.name = spec.name
        _scalar(feature)
        if spec.type == "int":
            feature.type = schema_pb2.INT
            if spec.min is not None:
                feature.int_domain.min = int(math.ceil(spec.min))
            if spec.max is not None:
                feature.int_domain.max = int(math.floor(spec.max))
            if spec.min is None and spec.max is None:
                feature.int_domain.SetInParent()
        elif spec.type == "float":
            feature.type = schema_pb2.FLOAT
            if spec.min is not None:
                feature.float_domain.min = spec.min
            if spec.max is not None:
                feature.float_domain.max = spec.max
            if spec.min is None and spec.max is None:
                feature.float_domain.SetInParent()
        elif spec.type == "bool":
            feature.type = schema_pb2.INT
            feature.bool_domain.SetInParent()
        else:
            feature.type = schema_pb2.BYTES
            if spec.values:
                feature.string_domain.name = spec.name
                feature.string_domain.value.extend(spec.values)
        if spec.description:
            feature.annotation.comment.append(spec.description)
        if threshold is not None and spec.drift_check:
            if spec.is_numeric:
                feature.drift_comparator.jensen_shannon_divergence.threshold = threshold
            else:
                feature.drift_comparator.infinity_norm.threshold = threshold

    label = config.label
    feature = schema.feature.add()
    feature.name = label.field
    _scalar(feature)
    feature.not_in_environment.append(SERVING_ENV)
    feature.annotation.tag.append("label")
    if label.type == "bool":
        feature.type = schema_pb2.INT
        feature.bool_domain.SetInParent()
    elif label.task == "binary_classification":
        feature.type = schema_pb2.INT
        feature.int_domain.min = 0
        feature.int_domain.max = 1
    else:
        feature.type = schema_pb2.INT if label.type == "int" else schema_pb2.FLOAT
        domain = feature.int_domain if label.type == "int" else feature.float_domain
        domain.SetInParent()
        if label.min is not None:
            domain.min = int(math.ceil(label.min)) if label.type == "int" else label.min
        if label.max is not None:
            domain.max = int(math.floor(label.max)) if label.type == "int" else label.max
    return schema


def _scalar(feature: schema_pb2.Feature) -> None:
    feature.presence.min_fraction = 1.0
    feature.presence.min_count = 1
    feature.value_count.min = 1
    feature.value_count.max = 1


def domain_bounds(feature: schema_pb2.Feature) -> tuple[float | None, float | None]:
    which = feature.WhichOneof("domain_info")
    if which == "int_domain":
        d = feature.int_domain
    elif which == "float_domain":
        d = feature.float_domain
    else:
        return None, None
    return (d.min if d.HasField("min") else None, d.max if d.HasField("max") else None)


def is_bool(feature: schema_pb2.Feature) -> bool:
    return feature.WhichOneof("domain_info") == "bool_domain"


def is_numeric(feature: schema_pb2.Feature) -> bool:
    return feature.type in (schema_pb2.INT, schema_pb2.FLOAT) and not is_bool(feature)


def drift_threshold(feature: schema_pb2.Feature) -> tuple[str, float] | None:
    if not feature.HasField("drift_comparator"):
        return None
    comparator = feature.drift_comparator
    if comparator.HasField("jensen_shannon_divergence"):
        return "jensen_shannon_distance", comparator.jensen_shannon_divergence.threshold
    if comparator.HasField("infinity_norm"):
        return "l_infinity", comparator.infinity_norm.threshold
    return None


# ------------------------------------------------------------------- value checks

MISSING = object()


def is_missing(value: Any) -> bool:
    return value is None or value is MISSING


def is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


def type_ok(feature: schema_pb2.Feature, value: Any) -> bool:
    """Whether a scalar ``value`` has the feature's type."""
    if is_bool(feature):
        return isinstance(value, (bool, np.bool_)) or (
            isinstance(value, (int, np.integer)) and value in (0, 1)
        )
    if isinstance(value, (bool, np.bool_)):
        return False
    if feature.type == schema_pb2.INT:
        if isinstance(value, (int, np.integer)):
            return True
        return isinstance(value, (float, np.floating)) and float(value).is_integer()
    if feature.type == schema_pb2.FLOAT:
        return isinstance(value, (int, float, np.integer, np.floating))
    return isinstance(value, (str, bytes))


def in_domain(feature: schema_pb2.Feature, value: Any) -> str | None:
    """None if a well-typed scalar is in the domain, else why not."""
    if is_bool(feature):
        return None
    if feature.type in (schema_pb2.INT, schema_pb2.FLOAT):
        x = float(value)
        if not math.isfinite(x):
            return "not finite"
        lo, hi = domain_bounds(feature)
        if lo is not None and x < lo:
            return f"below min {lo:g}"
        if hi is not None and x > hi:
            return f"above max {hi:g}"
        return None
    if feature.WhichOneof("domain_info") == "string_domain":
        text = value.decode() if isinstance(value, bytes) else value
        if text not in feature.string_domain.value:
            return "not an allowed value"
    return None


def type_name(feature: schema_pb2.Feature) -> str:
    if is_bool(feature):
        return "BOOL"
    return schema_pb2.FeatureType.Name(feature.type)
