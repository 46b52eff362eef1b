"""Data validation before training, against a schema derived from the dataset config.

The TFX ``ExampleValidator`` pattern without TFDV (which does not install next
to TensorFlow 2.21): the expected data is a ``tensorflow_metadata`` ``Schema``
proto built from the config (``schema_from_config``), statistics are computed
with numpy (``compute_statistics``, a JSON-serialisable dict that the trainer
stores with the model version so the next run can compare against it), and
``validate`` checks a batch of training rows against the schema and the
previous run's statistics. Pure functions, no I/O.

Checks (``check`` names of the anomalies):

``too_few_rows``        fewer rows than ``min_rows`` (default ``MIN_ROWS``).
``missing_feature``     a schema feature whose column is absent or NULL in every row.
``unexpected_feature``  a column that is neither a schema feature nor a known
                        key/time/lineage column (``LINEAGE_COLUMNS``, the key field,
                        the join key, ``extra_fields``).
``type_mismatch``       a value of the wrong type (e.g. a string in a FLOAT feature).
``low_presence``        the fraction of rows carrying the feature is below the
                        schema's ``presence.min_fraction`` (1.0: every row).
``value_count``         a list/array where exactly one scalar is expected
                        (``value_count`` min = max = 1).
``out_of_domain``       a number outside ``int_domain``/``float_domain`` (or NaN/inf),
                        a string outside ``string_domain``.
``label``               missing, mistyped or invalid labels, or a single class.
``degenerate_feature``  a feature that varied in the previous run is constant now.
``drift``               the feature's distribution moved away from the previous
                        run's: Jensen-Shannon distance of the numeric histograms,
                        L-infinity distance of the categorical frequencies, above the
                        schema's ``drift_comparator`` threshold
                        (``retraining.drift_threshold``). Skipped without previous
                        statistics or without a threshold.

Each anomaly is a dict ``{check, feature, detail, example_ids, severity}``
(``example_ids``: up to ``MAX_EXAMPLE_IDS`` offending rows' ``example_id``,
or ``row <index>`` when a row has none). ``severity`` is ``error`` (blocks
training) or ``warning`` (recorded, does not block).

Drift semantics (why drift is a warning by default). Drift against the previous
run is a *signal*, not proof of bad data. The usual reason to retrain is
concept drift, and the traffic simulator's drift ("road works") changes only
the relationship between the features and the label, not the feature
distributions (measured: the same distances with and without it); a moderate
feature shift (a change of season, a new sensor mix) is likewise a reason to
retrain, not to refuse. Windows shorter than a feature's natural cycle shift a
lot too: with the simulator's 10-minute day, two consecutive 3,000-row windows
at 10 events/s cover different halves of the day (hour_of_day 0.90,
occupancy 0.70), while 20,000-row windows give 0.02-0.09. So a distance above
``drift_threshold`` is a ``warning`` (recorded with the run and the model).

A broken feed must still block. Two rules make drift an ``error``:

* ``degenerate_feature``: a feature that varied in the previous run is now
  constant (a numeric feature with zero spread, a categorical feature with a
  single value): the classic stuck sensor or a default value written by an
  upstream bug. Needs previous statistics.
* a distance above ``drift_block_threshold`` (default
  ``DRIFT_BLOCK_THRESHOLD`` = 0.75): the histogram moved almost entirely into
  other bins (a unit change by orders of magnitude, a feed swapped for
  another). It is set above the ~0.56 that a growing window legitimately
  shows (half a day vs a whole day of hour_of_day); a stuck-at-zero
  vehicle_count only reaches ~0.56, hence the separate rule above. Windows
  that do not overlap and are shorter than the daily cycle can exceed it
  (the 0.90 above): mark such a feature ``drift_check: false`` in the config
  (traffic does for hour_of_day), size ``training_window_rows`` to cover the
  cycle, or pass ``drift_block_threshold=None`` (``--drift-block-threshold none``).

``block_on_drift=True`` makes every drift anomaly above ``drift_threshold`` an
error (the strict TFDV behaviour). The invalid-data checks (types, domains,
presence, value counts, label, row count) always block.

Histogram bins: ``HISTOGRAM_BINS`` equal bins between the feature's config
min/max plus an underflow and an overflow bin, so out-of-range mass counts as
drift too. Features without both bounds use the data's range; for the drift
comparison the current rows are re-binned with the previous run's edges, so
the two histograms are always comparable.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tensorflow_metadata.proto.v0 import schema_pb2

from dataset.config import DatasetConfig
from trainer.data import event_seconds, rfc3339

MIN_ROWS = 200
HISTOGRAM_BINS = 10
MAX_EXAMPLE_IDS = 20
MAX_CATEGORIES = 100
OTHER_CATEGORY = "__other__"
DRIFT_BLOCK_THRESHOLD = 0.75
LINEAGE_COLUMNS = (
    "example_id",
    "event_time",
    "label_time",
    "label_source",
    "ingestion_id",
    "ingested_at",
)
TRAINING_ENV = "TRAINING"
SERVING_ENV = "SERVING"

CHECKS = (
    "too_few_rows",
    "missing_feature",
    "unexpected_feature",
    "type_mismatch",
    "low_presence",
    "value_count",
    "out_of_domain",
    "label",
    "drift",
    "degenerate_feature",
)
ERROR = "error"
WARNING = "warning"

Row = Mapping[str, Any]


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


def _domain_bounds(feature: schema_pb2.Feature) -> tuple[float | None, float | None]:
    which = feature.WhichOneof("domain_info")
    if which == "int_domain":
        d = feature.int_domain
    elif which == "float_domain":
        d = feature.float_domain
    else:
        return None, None
    return (d.min if d.HasField("min") else None, d.max if d.HasField("max") else None)


def _is_bool(feature: schema_pb2.Feature) -> bool:
    return feature.WhichOneof("domain_info") == "bool_domain"


def _is_numeric(feature: schema_pb2.Feature) -> bool:
    return feature.type in (schema_pb2.INT, schema_pb2.FLOAT) and not _is_bool(feature)


def _drift_threshold(feature: schema_pb2.Feature) -> tuple[str, float] | None:
    if not feature.HasField("drift_comparator"):
        return None
    comparator = feature.drift_comparator
    if comparator.HasField("jensen_shannon_divergence"):
        return "jensen_shannon_distance", comparator.jensen_shannon_divergence.threshold
    if comparator.HasField("infinity_norm"):
        return "l_infinity", comparator.infinity_norm.threshold
    return None


# ------------------------------------------------------------------- value checks

_MISSING = object()


def _is_missing(value: Any) -> bool:
    return value is None or value is _MISSING


def _is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


def _type_ok(feature: schema_pb2.Feature, value: Any) -> bool:
    """Whether a scalar ``value`` has the feature's type."""
    if _is_bool(feature):
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


def _in_domain(feature: schema_pb2.Feature, value: Any) -> str | None:
    """None if a well-typed scalar is in the domain, else why not."""
    if _is_bool(feature):
        return None
    if feature.type in (schema_pb2.INT, schema_pb2.FLOAT):
        x = float(value)
        if not math.isfinite(x):
            return "not finite"
        lo, hi = _domain_bounds(feature)
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


def _type_name(feature: schema_pb2.Feature) -> str:
    if _is_bool(feature):
        return "BOOL"
    return schema_pb2.FeatureType.Name(feature.type)


def _row_id(row: Row, index: int) -> str:
    example_id = row.get("example_id")
    return str(example_id) if example_id not in (None, "") else f"row {index}"


def _anomaly(
    check: str, feature: str | None, detail: str, ids: Sequence[str] = (), severity: str = ERROR
) -> dict[str, Any]:
    return {
        "check": check,
        "feature": feature,
        "detail": detail,
        "example_ids": list(ids[:MAX_EXAMPLE_IDS]),
        "severity": severity,
    }


def _examples(values: Sequence[Any], limit: int = 3) -> str:
    shown = ", ".join(repr(v) for v in values[:limit])
    return shown + (", ..." if len(values) > limit else "")


# --------------------------------------------------------------------- statistics


def _histogram(values: np.ndarray, edges: Sequence[float]) -> dict[str, Any]:
    edges_arr = np.asarray(edges, dtype=np.float64)
    lo, hi = edges_arr[0], edges_arr[-1]
    inside = values[(values >= lo) & (values <= hi)]
    counts, _ = np.histogram(inside, bins=edges_arr)
    return {
        "edges": [float(e) for e in edges_arr],
        "counts": [int(c) for c in counts],
        "underflow": int(np.sum(values < lo)),
        "overflow": int(np.sum(values > hi)),
    }


def _default_edges(lo: float | None, hi: float | None, values: np.ndarray) -> list[float]:
    if lo is None or hi is None or not hi > lo:
        if values.size == 0:
            lo, hi = 0.0, 1.0
        else:
            lo = float(values.min()) if lo is None else lo
            hi = float(values.max()) if hi is None else hi
            if not hi > lo:
                lo, hi = lo - 0.5, lo + 0.5
    return [float(x) for x in np.linspace(lo, hi, HISTOGRAM_BINS + 1)]


def _category(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


def _feature_stats(
    feature: schema_pb2.Feature,
    kind_name: str,
    column: Sequence[Any],
    edges: Sequence[float] | None = None,
    categorical: bool = False,
) -> dict[str, Any]:
    """Statistics of one column (well-typed scalar values only)."""
    n = len(column)
    present = [v for v in column if not _is_missing(v)]
    scalars = [v for v in present if not _is_list(v) and _type_ok(feature, v)]
    stats: dict[str, Any] = {
        "type": kind_name,
        "count": len(present),
        "missing": n - len(present),
        "missing_fraction": (n - len(present)) / n if n else 0.0,
        "invalid_type": sum(1 for v in present if _is_list(v) or not _type_ok(feature, v)),
    }
    if _is_numeric(feature) and not categorical:
        values = np.asarray([float(v) for v in scalars], dtype=np.float64)
        finite = values[np.isfinite(values)]
        stats["kind"] = "numeric"
        stats["non_finite"] = int(values.size - finite.size)
        if finite.size:
            stats.update(
                mean=float(finite.mean()),
                std=float(finite.std()),
                min=float(finite.min()),
                max=float(finite.max()),
            )
        else:
            stats.update(mean=None, std=None, min=None, max=None)
        if edges is None:
            lo, hi = _domain_bounds(feature)
            edges = _default_edges(lo, hi, finite)
        stats["histogram"] = _histogram(finite, edges)
    else:
        stats["kind"] = "categorical"
        if categorical:  # a 0/1 label: "0"/"1" whether it came as int, float or bool
            scalars = [int(float(v)) if not isinstance(v, str) else v for v in scalars]
        counts = Counter(_category(v) for v in scalars)
        total = sum(counts.values())
        frequencies = {}
        for value, count in counts.most_common(MAX_CATEGORIES):
            frequencies[value] = count / total
        rest = total - sum(c for _, c in counts.most_common(MAX_CATEGORIES))
        if rest:
            frequencies[OTHER_CATEGORY] = rest / total
        stats["unique"] = len(counts)
        stats["frequencies"] = frequencies
    return stats


def _column(rows: Sequence[Row], name: str) -> list[Any]:
    return [row.get(name, _MISSING) for row in rows]


def _kind_name(config: DatasetConfig, name: str) -> str:
    if name == config.label.field:
        return config.label.type
    return config.feature(name).type


def compute_statistics(
    rows: Sequence[Row],
    config: DatasetConfig,
    edges: Mapping[str, Sequence[float]] | None = None,
    schema: schema_pb2.Schema | None = None,
) -> dict[str, Any]:
    """Statistics of a batch of training rows (a JSON-serialisable dict).

    ``{"rows", "event_time": {"start", "end"}, "features": {name: stats},
    "label": stats}``. Numeric stats: ``count``, ``missing``,
    ``missing_fraction``, ``invalid_type``, ``non_finite``, ``mean``, ``std``,
    ``min``, ``max`` and ``histogram`` ``{edges, counts, underflow, overflow}``
    (``HISTOGRAM_BINS`` bins between the config's min and max). Categorical
    (string/bool) stats: ``count``, ``missing``, ``missing_fraction``,
    ``invalid_type``, ``unique`` and ``frequencies`` (value -> fraction, the
    ``MAX_CATEGORIES`` most common, the rest as ``__other__``). A binary
    classification label is categorical (``"0"``/``"1"``).

    Args:
        rows: training rows (dicts).
        config: the dataset config.
        edges: optional histogram edges by feature (to compare with earlier stats).
        schema: the schema (default ``schema_from_config(config)``).
    """
    schema = schema or schema_from_config(config)
    edges = edges or {}
    out: dict[str, Any] = {"rows": len(rows), "features": {}}
    times = []
    for row in rows:
        if row.get("event_time") is not None:
            try:
                times.append(event_seconds(row))
            except (TypeError, ValueError):
                pass
    if times:
        out["event_time"] = {"start": rfc3339(min(times)), "end": rfc3339(max(times))}
    for feature in schema.feature:
        is_label = feature.name == config.label.field
        stats = _feature_stats(
            feature,
            _kind_name(config, feature.name),
            _column(rows, feature.name),
            edges.get(feature.name),
            categorical=is_label and config.label.task == "binary_classification",
        )
        if is_label:
            out["label"] = stats
        else:
            out["features"][feature.name] = stats
    return out


# -------------------------------------------------------------------------- drift


def jensen_shannon_distance(p: Sequence[float], q: Sequence[float]) -> float | None:
    """Jensen-Shannon distance (base 2, in [0, 1]) of two histograms; None if one is empty."""
    p_arr = np.asarray(p, dtype=np.float64)
    q_arr = np.asarray(q, dtype=np.float64)
    if p_arr.shape != q_arr.shape or p_arr.sum() <= 0 or q_arr.sum() <= 0:
        return None
    p_arr, q_arr = p_arr / p_arr.sum(), q_arr / q_arr.sum()
    m = (p_arr + q_arr) / 2.0

    def kl(a: np.ndarray, b: np.ndarray) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * np.log2(a[mask] / b[mask])))

    return float(math.sqrt(max(0.0, 0.5 * kl(p_arr, m) + 0.5 * kl(q_arr, m))))


def l_infinity_distance(p: Mapping[str, float], q: Mapping[str, float]) -> float | None:
    """Largest absolute difference of two value-frequency maps; None if one is empty."""
    if not p or not q:
        return None
    return float(max(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q)))


def _full_histogram(hist: Mapping[str, Any]) -> list[float]:
    return [hist.get("underflow", 0), *hist["counts"], hist.get("overflow", 0)]


def drift_distances(
    rows: Sequence[Row],
    config: DatasetConfig,
    previous_stats: Mapping[str, Any],
    statistics: Mapping[str, Any] | None = None,
    schema: schema_pb2.Schema | None = None,
) -> dict[str, dict[str, Any]]:
    """Per-feature distance between ``rows`` and ``previous_stats``.

    Returns:
        feature -> ``{"metric", "distance", "threshold"}`` for every feature that
        both sides have statistics for and whose schema has a drift comparator.
    """
    schema = schema or schema_from_config(config)
    statistics = statistics or compute_statistics(rows, config, schema=schema)
    previous = (previous_stats or {}).get("features") or {}
    out: dict[str, dict[str, Any]] = {}
    for feature in schema.feature:
        comparator = _drift_threshold(feature)
        before = previous.get(feature.name)
        if comparator is None or not before:
            continue
        metric, threshold = comparator
        if _is_numeric(feature):
            hist = before.get("histogram")
            if not hist or not hist.get("counts"):
                continue
            now = statistics["features"][feature.name].get("histogram")
            if not now or now.get("edges") != hist.get("edges"):
                now = _feature_stats(
                    feature,
                    _kind_name(config, feature.name),
                    _column(rows, feature.name),
                    hist["edges"],
                )["histogram"]
            distance = jensen_shannon_distance(_full_histogram(now), _full_histogram(hist))
        else:
            distance = l_infinity_distance(
                statistics["features"][feature.name].get("frequencies") or {},
                before.get("frequencies") or {},
            )
        if distance is not None:
            out[feature.name] = {
                "metric": metric,
                "distance": round(distance, 6),
                "threshold": threshold,
            }
    return out


def _degenerate(
    statistics: Mapping[str, Any], previous_stats: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Features that varied in the previous run and are constant now (a stuck feed)."""
    previous = previous_stats.get("features") or {}
    out = []
    for name, now in statistics["features"].items():
        before = previous.get(name)
        if not before or now.get("count", 0) - now.get("invalid_type", 0) < 2:
            continue
        if now.get("kind") == "numeric":
            if now.get("std") == 0.0 and (before.get("std") or 0.0) > 0.0:
                out.append(
                    _anomaly(
                        "degenerate_feature",
                        name,
                        f"every value is {now['min']:g} (the previous run's std was "
                        f"{before['std']:.4g}): a stuck or defaulted feed",
                    )
                )
        else:
            freqs = before.get("frequencies") or {}
            if now.get("unique") == 1 and len(freqs) > 1 and max(freqs.values()) < 0.99:
                value = next(iter(now["frequencies"]))
                out.append(
                    _anomaly(
                        "degenerate_feature",
                        name,
                        f"every value is {value!r} (the previous run had {len(freqs)} values): "
                        "a stuck or defaulted feed",
                    )
                )
    return out


# ---------------------------------------------------------------------- validate


@dataclasses.dataclass(frozen=True)
class ValidationResult:
    """The outcome of ``validate``.

    Attributes:
        ok: True when no anomaly has severity ``error``.
        anomalies: every anomaly (errors and warnings), as dicts.
        statistics: ``compute_statistics`` of the rows.
        drift: ``drift_distances`` against the previous statistics (empty if none).
    """

    ok: bool
    anomalies: list[dict[str, Any]]
    statistics: dict[str, Any]
    drift: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [a for a in self.anomalies if a["severity"] == ERROR]

    @property
    def warnings(self) -> list[dict[str, Any]]:
        return [a for a in self.anomalies if a["severity"] == WARNING]

    def summary(self, limit: int = 5, severity: str | None = ERROR) -> str:
        """``check feature: detail; ...`` of the first ``limit`` anomalies."""
        chosen = [a for a in self.anomalies if severity is None or a["severity"] == severity]
        parts = [
            f"{a['check']}{' ' + a['feature'] if a['feature'] else ''}: {a['detail']}"
            for a in chosen[:limit]
        ]
        if len(chosen) > limit:
            parts.append(f"... and {len(chosen) - limit} more")
        return "; ".join(parts)


def _check_column(
    feature: schema_pb2.Feature, column: Sequence[Any], ids: Sequence[str], is_label: bool
) -> list[dict[str, Any]]:
    """Presence, value count, type and domain anomalies of one column."""
    name = feature.name
    n = len(column)
    missing = [i for i, v in enumerate(column) if _is_missing(v)]
    if len(missing) == n:
        absent = all(v is _MISSING for v in column)
        what = "absent from every row" if absent else "NULL in every row"
        return [_anomaly("label" if is_label else "missing_feature", name, what)]

    anomalies = []
    present_fraction = (n - len(missing)) / n
    if missing and present_fraction < feature.presence.min_fraction:
        detail = (
            f"present in {present_fraction:.2%} of rows ({n - len(missing)}/{n}); "
            f"schema requires {feature.presence.min_fraction:.0%}"
        )
        if is_label:
            detail = f"label missing in {len(missing)} of {n} rows"
        anomalies.append(
            _anomaly(
                "label" if is_label else "low_presence", name, detail, [ids[i] for i in missing]
            )
        )

    multi = [i for i, v in enumerate(column) if _is_list(v)]
    if multi:
        counts = sorted({len(column[i]) for i in multi})
        anomalies.append(
            _anomaly(
                "label" if is_label else "value_count",
                name,
                f"{len(multi)} rows carry a list (lengths {counts[:5]}) where the schema "
                f"expects exactly {feature.value_count.min} scalar value",
                [ids[i] for i in multi],
            )
        )

    candidates = [i for i, v in enumerate(column) if not _is_missing(v) and not _is_list(v)]
    wrong = [i for i in candidates if not _type_ok(feature, column[i])]
    if wrong:
        kinds = sorted({type(column[i]).__name__ for i in wrong})
        anomalies.append(
            _anomaly(
                "label" if is_label else "type_mismatch",
                name,
                f"{len(wrong)} values are not {_type_name(feature)} (found {', '.join(kinds)}: "
                f"{_examples([column[i] for i in wrong])})",
                [ids[i] for i in wrong],
            )
        )
    wrong_set = set(wrong)
    bad: dict[str, list[int]] = {}
    for i in candidates:
        if i in wrong_set:
            continue
        why = _in_domain(feature, column[i])
        if why is not None:
            bad.setdefault(why, []).append(i)
    if bad:
        indexes = sorted(i for group in bad.values() for i in group)
        reasons = ", ".join(f"{len(group)} {why}" for why, group in bad.items())
        domain = _domain_text(feature)
        anomalies.append(
            _anomaly(
                "label" if is_label else "out_of_domain",
                name,
                f"{len(indexes)} values outside the domain {domain} ({reasons}: "
                f"{_examples([column[i] for i in indexes])})",
                [ids[i] for i in indexes],
            )
        )
    return anomalies


def _domain_text(feature: schema_pb2.Feature) -> str:
    which = feature.WhichOneof("domain_info")
    if which == "string_domain":
        return "{" + ", ".join(feature.string_domain.value) + "}"
    lo, hi = _domain_bounds(feature)
    return f"[{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}]"


def _expected_columns(config: DatasetConfig, schema: schema_pb2.Schema) -> set[str]:
    names = {f.name for f in schema.feature}
    names.update(LINEAGE_COLUMNS)
    names.add(config.key_field)
    names.add(config.event_time_field)
    if config.label.join_key:
        names.add(config.label.join_key)
    names.update(config.extra_fields)
    return names


def validate(
    rows: Sequence[Row],
    config: DatasetConfig,
    previous_stats: Mapping[str, Any] | None = None,
    *,
    schema: schema_pb2.Schema | None = None,
    min_rows: int = MIN_ROWS,
    block_on_drift: bool = False,
    drift_block_threshold: float | None = DRIFT_BLOCK_THRESHOLD,
) -> ValidationResult:
    """Validates a batch of training rows against the schema and the previous statistics.

    Args:
        rows: training rows (dicts with the training table's columns).
        config: the dataset config.
        previous_stats: the previous run's ``compute_statistics`` (None: no drift check).
        schema: the schema (default ``schema_from_config(config)``).
        min_rows: fewer rows is a ``too_few_rows`` error.
        block_on_drift: make every drift anomaly an error (default: a warning
            unless the distance exceeds ``drift_block_threshold``).
        drift_block_threshold: a drift distance above this is always an error
            (a broken feed rather than a shift); None disables that.
            ``degenerate_feature`` anomalies are always errors.

    Returns:
        ``ValidationResult(ok, anomalies, statistics, drift)``.
    """
    schema = schema or schema_from_config(config)
    statistics = compute_statistics(rows, config, schema=schema)
    anomalies: list[dict[str, Any]] = []
    n = len(rows)
    if n < min_rows:
        anomalies.append(
            _anomaly("too_few_rows", None, f"{n} rows; at least {min_rows} are needed")
        )
    if n == 0:
        return ValidationResult(False, anomalies, statistics)

    ids = [_row_id(row, i) for i, row in enumerate(rows)]
    expected = _expected_columns(config, schema)
    unexpected: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        for key in row:
            if key not in expected:
                unexpected.setdefault(key, []).append(i)
    for key, indexes in sorted(unexpected.items()):
        anomalies.append(
            _anomaly(
                "unexpected_feature",
                key,
                f"column not in the schema, present in {len(indexes)} of {n} rows",
                [ids[i] for i in indexes],
            )
        )

    for feature in schema.feature:
        is_label = feature.name == config.label.field
        anomalies.extend(_check_column(feature, _column(rows, feature.name), ids, is_label))

    if config.label.task == "binary_classification":
        label_feature = next(f for f in schema.feature if f.name == config.label.field)
        classes = {
            int(float(v))
            for v in _column(rows, config.label.field)
            if not _is_missing(v)
            and not _is_list(v)
            and _type_ok(label_feature, v)
            and _in_domain(label_feature, v) is None
        }
        if len(classes) == 1:
            anomalies.append(
                _anomaly(
                    "label",
                    config.label.field,
                    f"every label is {classes.pop()}: a classifier cannot learn from one class",
                )
            )

    drift: dict[str, dict[str, Any]] = {}
    if previous_stats:
        drift = drift_distances(rows, config, previous_stats, statistics, schema)
        for name, d in drift.items():
            if d["distance"] <= d["threshold"]:
                continue
            severe = drift_block_threshold is not None and d["distance"] > drift_block_threshold
            severity = ERROR if block_on_drift or severe else WARNING
            detail = (
                f"{d['metric']} {d['distance']:.3f} vs the previous run's statistics "
                f"exceeds {d['threshold']:g}"
            )
            if severe:
                detail += f" and the blocking threshold {drift_block_threshold:g}"
            anomalies.append(_anomaly("drift", name, detail, severity=severity))
        anomalies.extend(_degenerate(statistics, previous_stats))

    ok = not any(a["severity"] == ERROR for a in anomalies)
    return ValidationResult(ok, anomalies, statistics, drift)
