"""Dataset configuration: the stream's schema and policies, kept as code.

One YAML (or JSON) file describes a stream: which field is the key, where the
event time lives, the features with their types and allowed values, the
label (in the same message, or in a later message that references an earlier
one), the aggregation windows and the retraining policy. Everything else in
the system (validation, BigQuery schemas, aggregates, the simulator's replay
mode) is derived from it, so a new dataset needs a new file, not new code.

``load_config`` validates the file and raises ``ValueError`` naming the bad
field, e.g. ``configs/x.yaml: features.speed.min: expected a number, got 'fast'``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from typing import Any

import yaml

from dataset.history_spec import (
    TRAINING_LINEAGE_COLUMNS,
    HistoryFeatureSpec,
    parse_history_features,
)

FEATURE_TYPES = ("int", "float", "string", "bool")
NUMERIC_TYPES = ("int", "float")
LABEL_SOURCES = ("inline", "separate")
TASKS = ("binary_classification", "regression")
WINDOW_KINDS = ("fixed", "sliding")
TIME_FORMATS = ("iso8601", "epoch_seconds", "epoch_millis")
# The trainer's data-validation checks (trainer/validation.py documents each)
# and the severities a config may give them under ``validation.severity``.
VALIDATION_CHECKS = (
    "too_few_rows",
    "missing_feature",
    "unexpected_feature",
    "type_mismatch",
    "low_presence",
    "value_count",
    "out_of_domain",
    "label",
    "single_class",
    "degenerate_feature",
    "constant_feature",
    "drift",
    "severe_drift",
)
SEVERITIES = ("block", "warn")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# Reading a gs:// config: fail within this time rather than retry for minutes.
GCS_TIMEOUT_SECONDS = 60.0


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """One input feature: a scalar with a type and an allowed domain.

    ``drift_check: false`` leaves the feature out of the trainer's drift
    comparison (its domain and presence are still checked, and a feature that
    stops varying still blocks). Kept for compatibility: drift is now judged
    against the model lineage's merged reference, which covers a clock
    feature's whole cycle, so features such as the hour of day need no opt-out.
    """

    name: str
    type: str
    min: float | None = None
    max: float | None = None
    values: tuple[str, ...] | None = None
    description: str = ""
    drift_check: bool = True

    @property
    def is_numeric(self) -> bool:
        return self.type in NUMERIC_TYPES


@dataclasses.dataclass(frozen=True)
class LabelSpec:
    """The training target and how it reaches the pipeline.

    ``source: inline`` means the label is a field of the feature message.
    ``source: separate`` means a later message carries ``join_key`` and the
    label; the pipeline holds the features for up to ``max_delay_seconds``
    of event time waiting for it (ad conversions work this way).
    """

    field: str
    type: str
    task: str
    source: str = "inline"
    join_key: str | None = None
    max_delay_seconds: int = 3600
    negative_on_timeout: bool = False
    min: float | None = None
    max: float | None = None


@dataclasses.dataclass(frozen=True)
class WindowSpec:
    """One aggregation window: fixed (tumbling) or sliding."""

    name: str
    kind: str
    size_seconds: int
    period_seconds: int | None = None
    allowed_lateness_seconds: int = 0


@dataclasses.dataclass(frozen=True)
class RetrainingPolicy:
    """When the continuous-training loop asks for a new model."""

    min_new_examples: int = 1000
    min_interval_seconds: int = 60
    max_interval_seconds: int | None = None
    drift_threshold: float | None = None
    quality_floor: float | None = None
    quality_min_examples: int = 50
    training_window_rows: int = 50000
    validation_fraction: float = 0.2
    min_accuracy: float | None = None
    max_quality_drop: float = 0.02
    rollback_margin: float = 0.05
    warm_start: bool = False


MODEL_ARCHITECTURES = ("mlp", "linear")
CLASS_WEIGHTS = ("none", "balanced")
FEATURE_SCALINGS = ("auto", "config", "standardize")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The model the trainer builds (``model.keras_model``), from the config's ``model:``.

    ``architecture``: ``mlp`` (Dense ``hidden_units`` with ReLU, then the
    output) or ``linear`` (logistic / linear regression). ``epochs``: the
    maximum epochs (None: the trainer's ``--epochs``); every fit takes at
    least ``min_steps`` gradient steps. ``class_weight: balanced`` weighs
    classes by inverse frequency. ``feature_scaling``: ``config`` scales
    numbers with the config's min/max only (``model.features``);
    ``standardize`` also adds a normalization layer fitted on the training
    rows (inside the SavedModel, so serving needs nothing else); ``auto``
    standardizes only the numeric features without a config min/max (a
    model without such features is exactly the ``config`` one).
    """

    architecture: str = "mlp"
    hidden_units: tuple[int, ...] = (16,)
    epochs: int | None = None
    min_steps: int = 600
    batch_size: int = 128
    learning_rate: float = 0.01
    class_weight: str = "none"
    feature_scaling: str = "auto"
    early_stopping_patience: int = 3


@dataclasses.dataclass(frozen=True)
class ValidationPolicy:
    """Overrides of the trainer's data-validation severities.

    ``severity`` holds ``(check, "block"|"warn")`` pairs from the config's
    ``validation: {severity: {check: block|warn}}``; checks not named keep the
    defaults documented in ``trainer.validation``.
    """

    severity: tuple[tuple[str, str], ...] = ()

    def severity_of(self, check: str, default: str) -> str:
        """The configured severity of ``check``, else ``default``."""
        return dict(self.severity).get(check, default)


@dataclasses.dataclass(frozen=True)
class Limits:
    """What the pipeline accepts before validating a message's fields.

    A message over ``max_message_bytes``, or whose event time is more than
    ``max_event_age_seconds`` before (or ``max_future_seconds`` after) the time
    it was published, is a dead letter. ``max_event_age_seconds`` None means
    the largest ``allowed_lateness_seconds`` of the windows: an accepted record
    is then never too late for any window (on Dataflow, whose watermark follows
    publish time).
    """

    max_message_bytes: int = 1_048_576
    max_event_age_seconds: int | None = None
    max_future_seconds: int = 300


@dataclasses.dataclass(frozen=True)
class TableNames:
    """BigQuery table names (inside the dataset given on the command line)."""

    aggregates: str = "aggregates"
    training_examples: str = "training_examples"
    dead_letter: str = "dead_letter"
    predictions: str = "predictions"
    prediction_quality: str = "prediction_quality"
    retrain_triggers: str = "retrain_triggers"
    training_runs: str = "training_runs"
    data_quarantine: str = "data_quarantine"


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """A validated dataset description. Build it with ``load_config``."""

    name: str
    key_field: str
    event_time_field: str
    event_time_format: str
    event_time_attribute: str
    id_attribute: str
    features: tuple[FeatureSpec, ...]
    label: LabelSpec
    windows: tuple[WindowSpec, ...]
    retraining: RetrainingPolicy
    tables: TableNames
    extra_fields: tuple[str, ...] = ()
    evaluation_window_seconds: int = 60
    description: str = ""
    source_path: str = ""
    validation: ValidationPolicy = ValidationPolicy()
    limits: Limits = Limits()
    model: ModelSpec = ModelSpec()
    history_features: tuple[HistoryFeatureSpec, ...] = ()  # dataset.history_spec

    @property
    def max_event_age_seconds(self) -> int:
        """``limits.max_event_age_seconds``, defaulting to the largest allowed lateness."""
        if self.limits.max_event_age_seconds is not None:
            return self.limits.max_event_age_seconds
        return max(w.allowed_lateness_seconds for w in self.windows)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def numeric_features(self) -> tuple[FeatureSpec, ...]:
        return tuple(f for f in self.features if f.is_numeric)

    def feature(self, name: str) -> FeatureSpec:
        for spec in self.features:
            if spec.name == name:
                return spec
        raise KeyError(name)


class _Reader:
    """Reads typed values out of nested mappings, naming the path on error."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, path: str, message: str) -> ValueError:
        return ValueError(f"{self.source}: {path}: {message}")

    def mapping(self, value: Any, path: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(path, f"expected a mapping, got {type(value).__name__}")
        return value

    def get(self, m: Mapping[str, Any], key: str, path: str, kind, default=...) -> Any:
        full = f"{path}.{key}" if path else key
        if key not in m or m[key] is None:
            if default is ...:
                raise self.fail(full, "is required")
            return default
        value = m[key]
        if kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise self.fail(full, f"expected a number, got {value!r}")
            return float(value)
        if kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.fail(full, f"expected an integer, got {value!r}")
            return value
        if kind is bool:
            if not isinstance(value, bool):
                raise self.fail(full, f"expected true or false, got {value!r}")
            return value
        if kind is str:
            if not isinstance(value, str) or not value:
                raise self.fail(full, f"expected a non-empty string, got {value!r}")
            return value
        if kind is list:
            if not isinstance(value, list):
                raise self.fail(full, f"expected a list, got {type(value).__name__}")
            return value
        return self.mapping(value, full)

    def name(self, m, key: str, path: str, default=...) -> str:
        value = self.get(m, key, path, str, default)
        if value is not None and not _NAME_RE.match(value):
            raise self.fail(
                f"{path}.{key}" if path else key,
                f"{value!r} is not a valid column name (letters, digits, underscore)",
            )
        return value

    def choice(self, m, key: str, path: str, choices, default=...) -> str:
        value = self.get(m, key, path, str, default)
        if value not in choices:
            raise self.fail(f"{path}.{key}", f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    def unknown_keys(self, m: Mapping[str, Any], allowed: set[str], path: str) -> None:
        extra = sorted(set(m) - allowed)
        if extra:
            where = f"{path}." if path else ""
            raise self.fail(
                f"{where}{extra[0]}",
                f"unknown setting (allowed: {', '.join(sorted(allowed))})",
            )


def _parse_feature(r: _Reader, name: str, raw: Any) -> FeatureSpec:
    path = f"features.{name}"
    if not _NAME_RE.match(name):
        raise r.fail(path, "feature names must be letters, digits and underscores")
    m = r.mapping(raw, path)
    r.unknown_keys(m, {"type", "min", "max", "values", "description", "drift_check"}, path)
    ftype = r.choice(m, "type", path, FEATURE_TYPES)
    lo = r.get(m, "min", path, float, None)
    hi = r.get(m, "max", path, float, None)
    values = r.get(m, "values", path, list, None)
    if ftype not in NUMERIC_TYPES and (lo is not None or hi is not None):
        raise r.fail(path, f"min/max only apply to numeric features, not {ftype}")
    if lo is not None and hi is not None and lo > hi:
        raise r.fail(f"{path}.min", f"min {lo} is greater than max {hi}")
    if values is not None:
        if ftype != "string":
            raise r.fail(f"{path}.values", "allowed values only apply to string features")
        if not values or not all(isinstance(v, str) for v in values):
            raise r.fail(f"{path}.values", "expected a non-empty list of strings")
        values = tuple(values)
    return FeatureSpec(
        name=name,
        type=ftype,
        min=lo,
        max=hi,
        values=values,
        description=r.get(m, "description", path, str, ""),
        drift_check=r.get(m, "drift_check", path, bool, True),
    )


def _parse_label(r: _Reader, raw: Any) -> LabelSpec:
    path = "label"
    m = r.mapping(raw, path)
    r.unknown_keys(
        m,
        {
            "field",
            "type",
            "task",
            "source",
            "join_key",
            "max_delay_seconds",
            "negative_on_timeout",
            "min",
            "max",
        },
        path,
    )
    task = r.choice(m, "task", path, TASKS)
    ltype = r.choice(m, "type", path, ("int", "float", "bool"))
    if task == "binary_classification" and ltype == "float":
        raise r.fail(f"{path}.type", "a binary_classification label must be int or bool")
    source = r.choice(m, "source", path, LABEL_SOURCES, "inline")
    join_key = r.name(m, "join_key", path, None)
    if source == "separate" and join_key is None:
        raise r.fail(
            f"{path}.join_key",
            "is required when source is 'separate' (the field that label messages "
            "share with the feature message they label)",
        )
    delay = r.get(m, "max_delay_seconds", path, int, 3600)
    if delay <= 0:
        raise r.fail(f"{path}.max_delay_seconds", "must be positive")
    negative = r.get(m, "negative_on_timeout", path, bool, False)
    if negative and task != "binary_classification":
        raise r.fail(f"{path}.negative_on_timeout", "only applies to binary_classification")
    return LabelSpec(
        field=r.name(m, "field", path),
        type=ltype,
        task=task,
        source=source,
        join_key=join_key,
        max_delay_seconds=delay,
        negative_on_timeout=negative,
        min=r.get(m, "min", path, float, None),
        max=r.get(m, "max", path, float, None),
    )


def _parse_windows(r: _Reader, raw: Any) -> tuple[WindowSpec, ...]:
    m = r.mapping(raw, "windows")
    r.unknown_keys(m, {"allowed_lateness_seconds", "specs"}, "windows")
    lateness = r.get(m, "allowed_lateness_seconds", "windows", int, 0)
    if lateness < 0:
        raise r.fail("windows.allowed_lateness_seconds", "must be >= 0")
    specs = r.get(m, "specs", "windows", list)
    if not specs:
        raise r.fail("windows.specs", "needs at least one window")
    out = []
    for i, spec in enumerate(specs):
        path = f"windows.specs[{i}]"
        w = r.mapping(spec, path)
        r.unknown_keys(
            w,
            {"name", "kind", "size_seconds", "period_seconds", "allowed_lateness_seconds"},
            path,
        )
        kind = r.choice(w, "kind", path, WINDOW_KINDS)
        size = r.get(w, "size_seconds", path, int)
        if size <= 0:
            raise r.fail(f"{path}.size_seconds", "must be positive")
        period = r.get(w, "period_seconds", path, int, None)
        if kind == "sliding":
            if period is None:
                raise r.fail(f"{path}.period_seconds", "is required for sliding windows")
            if period <= 0 or period > size:
                raise r.fail(f"{path}.period_seconds", "must be in (0, size_seconds]")
        elif period is not None:
            raise r.fail(f"{path}.period_seconds", "only applies to sliding windows")
        out.append(
            WindowSpec(
                name=r.name(w, "name", path),
                kind=kind,
                size_seconds=size,
                period_seconds=period,
                allowed_lateness_seconds=r.get(w, "allowed_lateness_seconds", path, int, lateness),
            )
        )
    names = [w.name for w in out]
    if len(set(names)) != len(names):
        raise r.fail("windows.specs", f"window names must be unique: {names}")
    return tuple(out)


def _parse_retraining(r: _Reader, raw: Any) -> RetrainingPolicy:
    path = "retraining"
    m = r.mapping(raw or {}, path)
    fields = {f.name for f in dataclasses.fields(RetrainingPolicy)}
    r.unknown_keys(m, fields, path)
    defaults = RetrainingPolicy()
    policy = RetrainingPolicy(
        min_new_examples=r.get(m, "min_new_examples", path, int, defaults.min_new_examples),
        min_interval_seconds=r.get(
            m, "min_interval_seconds", path, int, defaults.min_interval_seconds
        ),
        max_interval_seconds=r.get(m, "max_interval_seconds", path, int, None),
        drift_threshold=r.get(m, "drift_threshold", path, float, None),
        quality_floor=r.get(m, "quality_floor", path, float, None),
        training_window_rows=r.get(
            m, "training_window_rows", path, int, defaults.training_window_rows
        ),
        quality_min_examples=r.get(
            m, "quality_min_examples", path, int, defaults.quality_min_examples
        ),
        validation_fraction=r.get(
            m, "validation_fraction", path, float, defaults.validation_fraction
        ),
        min_accuracy=r.get(m, "min_accuracy", path, float, None),
        max_quality_drop=r.get(m, "max_quality_drop", path, float, defaults.max_quality_drop),
        rollback_margin=r.get(m, "rollback_margin", path, float, defaults.rollback_margin),
        warm_start=r.get(m, "warm_start", path, bool, defaults.warm_start),
    )
    if not 0.0 < policy.validation_fraction < 1.0:
        raise r.fail(f"{path}.validation_fraction", "must be between 0 and 1")
    if policy.min_new_examples <= 0:
        raise r.fail(f"{path}.min_new_examples", "must be positive")
    if policy.min_interval_seconds < 0:
        raise r.fail(f"{path}.min_interval_seconds", "must be >= 0")
    return policy


def _parse_validation(r: _Reader, raw: Any) -> ValidationPolicy:
    m = r.mapping(raw or {}, "validation")
    r.unknown_keys(m, {"severity"}, "validation")
    severity = r.mapping(m.get("severity") or {}, "validation.severity")
    pairs = []
    for check, value in severity.items():
        path = f"validation.severity.{check}"
        if check not in VALIDATION_CHECKS:
            raise r.fail(path, f"unknown check (known: {', '.join(VALIDATION_CHECKS)})")
        if value not in SEVERITIES:
            raise r.fail(path, f"must be one of {', '.join(SEVERITIES)}; got {value!r}")
        pairs.append((str(check), value))
    return ValidationPolicy(severity=tuple(sorted(pairs)))


def _parse_limits(r: _Reader, raw: Any) -> Limits:
    path = "limits"
    m = r.mapping(raw or {}, path)
    r.unknown_keys(m, {f.name for f in dataclasses.fields(Limits)}, path)
    defaults = Limits()
    limits = Limits(
        max_message_bytes=r.get(m, "max_message_bytes", path, int, defaults.max_message_bytes),
        max_event_age_seconds=r.get(m, "max_event_age_seconds", path, int, None),
        max_future_seconds=r.get(m, "max_future_seconds", path, int, defaults.max_future_seconds),
    )
    if limits.max_message_bytes <= 0:
        raise r.fail(f"{path}.max_message_bytes", "must be a positive number of bytes")
    if limits.max_event_age_seconds is not None and limits.max_event_age_seconds < 0:
        raise r.fail(
            f"{path}.max_event_age_seconds",
            "must be >= 0 (seconds an event may precede its publish time; "
            "leave it out to use the windows' allowed lateness)",
        )
    if limits.max_future_seconds < 0:
        raise r.fail(f"{path}.max_future_seconds", "must be >= 0")
    return limits


def _parse_model(r: _Reader, raw: Any) -> ModelSpec:
    path = "model"
    m = r.mapping(raw or {}, path)
    r.unknown_keys(m, {f.name for f in dataclasses.fields(ModelSpec)}, path)
    d = ModelSpec()
    units = r.get(m, "hidden_units", path, list, list(d.hidden_units))
    if not all(isinstance(u, int) and not isinstance(u, bool) and u > 0 for u in units):
        raise r.fail(f"{path}.hidden_units", f"expected a list of positive integers, got {units}")
    spec = ModelSpec(
        architecture=r.choice(m, "architecture", path, MODEL_ARCHITECTURES, d.architecture),
        hidden_units=tuple(units),
        epochs=r.get(m, "epochs", path, int, d.epochs),
        min_steps=r.get(m, "min_steps", path, int, d.min_steps),
        batch_size=r.get(m, "batch_size", path, int, d.batch_size),
        learning_rate=r.get(m, "learning_rate", path, float, d.learning_rate),
        class_weight=r.choice(m, "class_weight", path, CLASS_WEIGHTS, d.class_weight),
        feature_scaling=r.choice(m, "feature_scaling", path, FEATURE_SCALINGS, d.feature_scaling),
        early_stopping_patience=r.get(
            m, "early_stopping_patience", path, int, d.early_stopping_patience
        ),
    )
    if spec.architecture == "mlp" and not spec.hidden_units:
        raise r.fail(f"{path}.hidden_units", "an mlp needs at least one hidden layer")
    for name in ("epochs", "batch_size"):
        value = getattr(spec, name)
        if value is not None and value <= 0:
            raise r.fail(f"{path}.{name}", "must be positive")
    if spec.min_steps < 0 or spec.early_stopping_patience < 0:
        raise r.fail(path, "min_steps and early_stopping_patience must be >= 0")
    if not spec.learning_rate > 0:
        raise r.fail(f"{path}.learning_rate", "must be positive")
    return spec


def _parse_tables(r: _Reader, raw: Any) -> TableNames:
    m = r.mapping(raw or {}, "tables")
    fields = {f.name for f in dataclasses.fields(TableNames)}
    r.unknown_keys(m, fields, "tables")
    defaults = TableNames()
    return TableNames(
        **{name: r.name(m, name, "tables", getattr(defaults, name)) for name in fields}
    )


def config_from_dict(raw: Any, source: str = "<config>") -> DatasetConfig:
    """Validates a parsed config document and returns a ``DatasetConfig``."""
    r = _Reader(source)
    m = r.mapping(raw, "(top level)")
    r.unknown_keys(
        m,
        {
            "name",
            "description",
            "key_field",
            "event_time",
            "id_attribute",
            "features",
            "label",
            "windows",
            "retraining",
            "tables",
            "extra_fields",
            "evaluation_window_seconds",
            "validation",
            "limits",
            "model",
            "history_features",
        },
        "",
    )
    et = r.get(m, "event_time", "", dict)
    r.unknown_keys(et, {"field", "format", "attribute"}, "event_time")
    raw_features = r.get(m, "features", "", dict)
    if not raw_features:
        raise r.fail("features", "needs at least one feature")
    features = tuple(_parse_feature(r, str(k), v) for k, v in raw_features.items())
    extra = r.get(m, "extra_fields", "", list, [])
    cfg = DatasetConfig(
        name=r.name(m, "name", ""),
        description=r.get(m, "description", "", str, ""),
        key_field=r.name(m, "key_field", ""),
        event_time_field=r.name(et, "field", "event_time"),
        event_time_format=r.choice(et, "format", "event_time", TIME_FORMATS, "iso8601"),
        event_time_attribute=r.get(et, "attribute", "event_time", str, "event_time"),
        id_attribute=r.get(m, "id_attribute", "", str, "message_id"),
        features=features,
        label=_parse_label(r, r.get(m, "label", "", dict)),
        windows=_parse_windows(r, r.get(m, "windows", "", dict)),
        retraining=_parse_retraining(r, m.get("retraining")),
        tables=_parse_tables(r, m.get("tables")),
        extra_fields=tuple(str(x) for x in extra),
        evaluation_window_seconds=r.get(m, "evaluation_window_seconds", "", int, 60),
        source_path=source,
        validation=_parse_validation(r, m.get("validation")),
        limits=_parse_limits(r, m.get("limits")),
        model=_parse_model(r, m.get("model")),
    )
    if cfg.evaluation_window_seconds <= 0:
        raise r.fail("evaluation_window_seconds", "must be positive")
    reserved = [cfg.key_field, cfg.event_time_field, cfg.label.field]
    if cfg.label.join_key:
        reserved.append(cfg.label.join_key)
    reserved.extend(cfg.extra_fields)
    names = [*reserved, *cfg.feature_names]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise r.fail(
            "features",
            f"field {dupes[0]!r} is used twice (key, event time, label, join key, "
            "extra fields and features must all have different names)",
        )
    history = parse_history_features(
        m.get("history_features"),
        {f.name: f.type for f in cfg.features},
        cfg.label.source,
        {*names, *TRAINING_LINEAGE_COLUMNS},
        r.fail,
    )
    return dataclasses.replace(cfg, history_features=history) if history else cfg


def read_config_text(path: str) -> str:
    """The text of a config file: a local path (or ``file://``), or ``gs://bucket/object``.

    ``gs://`` is read with google-cloud-storage (Application Default
    Credentials; ``STORAGE_EMULATOR_HOST`` selects an emulator).

    Raises:
        ValueError: if the file or object does not exist or cannot be read.
    """
    if path.startswith("gs://"):
        return _read_gcs_text(path)
    local = path.removeprefix("file://")
    if "://" in local:
        raise ValueError(
            f"dataset config {path!r}: only local paths, file:// and gs:// URIs are supported"
        )
    if not os.path.exists(local):
        raise ValueError(f"dataset config {path!r} does not exist")
    with open(local, encoding="utf-8") as f:
        return f.read()


def _read_gcs_text(uri: str) -> str:
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc
    from google.cloud import storage
    from google.cloud.storage.retry import DEFAULT_RETRY

    bucket, _, name = uri[len("gs://") :].partition("/")
    if not bucket or not name:
        raise ValueError(f"dataset config {uri!r}: expected gs://<bucket>/<object>")
    try:
        blob = storage.Client().bucket(bucket).blob(name)
        data = blob.download_as_bytes(
            timeout=GCS_TIMEOUT_SECONDS, retry=DEFAULT_RETRY.with_deadline(GCS_TIMEOUT_SECONDS)
        )
    except gexc.NotFound:
        raise ValueError(f"dataset config {uri!r} does not exist") from None
    except (gexc.GoogleAPIError, auth_exc.GoogleAuthError, OSError) as e:
        raise ValueError(f"dataset config {uri!r} could not be read: {e}") from e
    return data.decode("utf-8")


def load_config(path: str | os.PathLike) -> DatasetConfig:
    """Loads and validates a dataset config from a YAML or JSON file (local or gs://)."""
    path = os.fspath(path)
    text = read_config_text(path)
    try:
        raw = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid YAML/JSON: {e}") from e
    return config_from_dict(raw, source=path)
