"""Statistics of a training window, and how far one window is from a reference.

``compute_statistics`` summarises a batch of training rows (a JSON-serialisable
dict stored with the model version, so the next run can compare against it).
``drift_distances`` measures each feature's distance from a *reference*:
Jensen-Shannon distance of numeric histograms, L-infinity distance of
categorical frequencies.

Two things keep sampling and window effects from counting as drift:

* **A larger reference.** ``with_reference`` stores, next to a window's own
  statistics, the merged histograms of every earlier window of the model
  lineage (``reference``; older windows are down-weighted once the merged
  count passes ``REFERENCE_MAX_ROWS``). Consecutive windows shorter than a
  feature's natural cycle (a clock feature, a weekly pattern) each cover
  part of the cycle; the merged reference covers all of it.
* **A window-size noise floor.** Two samples of one distribution differ by
  chance, more so when small. ``noise_floor`` is the approximate 99th
  percentile of the distance between two samples of the same distribution
  with the given sizes and number of bins; a distance below it is noise
  whatever the configured threshold.

``outside_share`` is the share of a window's mass where the reference has
(almost) none: a window narrower than the reference (fewer hours, a quiet
period) has none outside; a unit change or a swapped feed has most outside.

Histogram bins: ``HISTOGRAM_BINS`` equal bins between the feature's config
min/max plus an underflow and an overflow bin, so out-of-range mass counts as
drift too. Features without both bounds use the data's range; for comparisons
the current rows are re-binned with the reference's edges.

Rows come as a list of dicts or as a ``trainer.data.RowTable``; a table's
number and string columns are summarised with numpy/Arrow a column at a time
(``numeric_column``), with exactly the per-value results; other columns
(lists, mixed types, bools) value by value.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from tensorflow_metadata.proto.v0 import schema_pb2

from dataset.config import DatasetConfig
from dataset.times import event_seconds, rfc3339
from trainer.data import RowTable, event_seconds_array
from trainer.schema import (
    MISSING,
    domain_bounds,
    drift_threshold,
    is_bool,
    is_list,
    is_missing,
    is_numeric,
    schema_from_config,
    type_ok,
)

HISTOGRAM_BINS = 10
MAX_CATEGORIES = 100
OTHER_CATEGORY = "__other__"
REFERENCE_MAX_ROWS = 200_000
# A reference share below this counts as "the reference has no mass here".
REFERENCE_EMPTY_SHARE = 0.01
# ~99th percentile of a standard normal (the categorical noise floor).
_Z99 = 2.326

Row = Mapping[str, Any]


def _numeric_stats(values: np.ndarray, feature, edges) -> dict:
    """Kind, non-finite count, moments and histogram of a numeric column's typed values."""
    finite = values[np.isfinite(values)]
    stats: dict = {"kind": "numeric", "non_finite": int(values.size - finite.size)}
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
        lo, hi = domain_bounds(feature)
        edges = _default_edges(lo, hi, finite)
    stats["histogram"] = _histogram(finite, edges)
    return stats


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


def numeric_column(feature: schema_pb2.Feature, values: Any):
    """``(present, well_typed, numbers)`` masks and float64 values of an Arrow number column.

    None unless ``values`` is an Arrow integer or floating column and the feature
    is an INT or FLOAT (then ``type_ok`` holds for every present value of an
    integer column, and for the integral finite values of a floating column of
    an INT feature): the column-wise form of the per-value checks.
    """
    if not isinstance(values, pa.Array) or is_bool(feature) or not is_numeric(feature):
        return None
    kind = values.type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        return None
    present = ~values.is_null().to_numpy(zero_copy_only=False)
    numbers = values.fill_null(0).to_numpy(zero_copy_only=False).astype(np.float64)
    typed = present
    if pa.types.is_floating(kind) and feature.type == schema_pb2.INT:
        with np.errstate(invalid="ignore"):
            typed = present & np.isfinite(numbers) & (np.floor(numbers) == numbers)
    return present, typed, numbers


def _string_column(feature: schema_pb2.Feature, values: Any) -> pa.DictionaryArray | None:
    """A string feature's Arrow string column, dictionary-encoded (first-seen order); else None."""
    if not isinstance(values, pa.Array) or is_numeric(feature) or is_bool(feature):
        return None
    if feature.type != schema_pb2.BYTES or not (
        pa.types.is_string(values.type) or pa.types.is_large_string(values.type)
    ):
        return None
    return values.dictionary_encode()


def _frequencies(labels: Sequence[str], counts: np.ndarray) -> tuple[dict[str, float], int]:
    """``Counter.most_common`` frequencies of labels in first-seen order with ``counts``."""
    order = np.argsort(-counts, kind="stable")
    total = int(counts.sum())
    frequencies = {labels[i]: int(counts[i]) / total for i in order[:MAX_CATEGORIES]}
    rest = total - int(counts[order[:MAX_CATEGORIES]].sum())
    if rest:
        frequencies[OTHER_CATEGORY] = rest / total
    return frequencies, len(labels)


def _feature_stats_columnar(
    feature: schema_pb2.Feature,
    kind_name: str,
    values: pa.Array,
    edges: Sequence[float] | None,
    categorical: bool,
) -> dict[str, Any] | None:
    """``feature_stats`` of an Arrow column, or None when only the per-value path applies."""
    n = len(values)
    numeric = numeric_column(feature, values)
    strings = None if numeric is not None else _string_column(feature, values)
    if numeric is None and strings is None:
        return None
    if numeric is not None:
        present, typed, numbers = numeric
        count = int(present.sum())
        invalid = count - int(typed.sum())
    else:
        count = n - strings.null_count
        invalid = 0
    stats: dict[str, Any] = {
        "type": kind_name,
        "count": count,
        "missing": n - count,
        "missing_fraction": (n - count) / n if n else 0.0,
        "invalid_type": invalid,
    }
    if numeric is not None and not categorical:
        stats.update(_numeric_stats(numbers[typed], feature, edges))
        return stats
    stats["kind"] = "categorical"
    if numeric is not None:  # a 0/1 label: "0"/"1" whether it came as int or float
        ints = numbers[typed]
        if not np.isfinite(ints).all():
            return None
        uniques, first, counts = np.unique(
            np.trunc(ints).astype(np.int64), return_index=True, return_counts=True
        )
        seen = np.argsort(first, kind="stable")
        labels = [str(int(u)) for u in uniques[seen]]
        counts = counts[seen]
    else:
        labels = [str(v) for v in strings.dictionary.to_pylist()]
        indexes = strings.indices.drop_null().to_numpy(zero_copy_only=False)
        counts = np.bincount(indexes, minlength=len(labels))
    frequencies, unique = _frequencies(labels, counts) if len(labels) else ({}, 0)
    stats["unique"] = unique
    stats["frequencies"] = frequencies
    return stats


def feature_stats(
    feature: schema_pb2.Feature,
    kind_name: str,
    column: Sequence[Any] | pa.Array,
    edges: Sequence[float] | None = None,
    categorical: bool = False,
) -> dict[str, Any]:
    """Statistics of one column (well-typed scalar values only).

    ``column`` is a sequence of values or an Arrow array (``column`` of a
    ``RowTable``): number and string columns are summarised column-wise with
    the same results; anything else value by value.
    """
    if isinstance(column, pa.Array):
        fast = _feature_stats_columnar(feature, kind_name, column, edges, categorical)
        if fast is not None:
            return fast
        column = column.to_pylist()
    n = len(column)
    present = [v for v in column if not is_missing(v)]
    scalars = [v for v in present if not is_list(v) and type_ok(feature, v)]
    stats: dict[str, Any] = {
        "type": kind_name,
        "count": len(present),
        "missing": n - len(present),
        "missing_fraction": (n - len(present)) / n if n else 0.0,
        "invalid_type": sum(1 for v in present if is_list(v) or not type_ok(feature, v)),
    }
    if is_numeric(feature) and not categorical:
        values = np.asarray([float(v) for v in scalars], dtype=np.float64)
        stats.update(_numeric_stats(values, feature, edges))
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


def column(rows: Sequence[Row], name: str) -> Sequence[Any] | pa.Array:
    """The values of ``name`` in every row (``MISSING`` where absent).

    For a ``RowTable`` that has the column: the Arrow array itself (NULL where absent).
    """
    if isinstance(rows, RowTable):
        values = rows.column(name)
        return [MISSING] * len(rows) if values is None else values
    return [row.get(name, MISSING) for row in rows]


def kind_name(config: DatasetConfig, name: str) -> str:
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
    times = _event_times(rows)
    if len(times):
        out["event_time"] = {"start": rfc3339(float(min(times))), "end": rfc3339(float(max(times)))}
    for feature in schema.feature:
        is_label = feature.name == config.label.field
        stats = feature_stats(
            feature,
            kind_name(config, feature.name),
            column(rows, feature.name),
            edges.get(feature.name),
            categorical=is_label and config.label.task == "binary_classification",
        )
        if is_label:
            out["label"] = stats
        else:
            out["features"][feature.name] = stats
    return out


def _event_times(rows: Sequence[Row]) -> Sequence[float]:
    """The event times (epoch seconds) of the rows that have a readable one."""
    if isinstance(rows, RowTable):
        values = rows.column("event_time")
        if values is not None and pa.types.is_timestamp(values.type) and not values.null_count:
            return event_seconds_array(rows)
    times = []
    for row in rows:
        if row.get("event_time") is not None:
            try:
                times.append(event_seconds(row))
            except (TypeError, ValueError):
                pass
    return times


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


def _chi2_quantile_99(df: int) -> float:
    """The 99th percentile of a chi-square distribution (Wilson-Hilferty approximation)."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + _Z99 * math.sqrt(a)) ** 3


def noise_floor(metric: str, n: float, m: float, bins: int) -> float:
    """The distance two samples of ONE distribution reach by chance (~99th percentile).

    Args:
        metric: ``jensen_shannon_distance`` or ``l_infinity``.
        n: rows in the window; m: rows in the reference.
        bins: histogram bins (or categories) with mass on either side.

    Jensen-Shannon: the divergence of two samples is about
    ``chi2(bins - 1) * (1/n + 1/m) / 8`` nats; L-infinity: a frequency
    difference of ``3 * sqrt(0.25 * (1/n + 1/m))`` (the worst-case variance).
    """
    if n <= 0 or m <= 0:
        return 1.0
    inverse = 1.0 / n + 1.0 / m
    if metric == "l_infinity":
        return min(1.0, 3.0 * math.sqrt(0.25 * inverse))
    df = max(bins - 1, 1)
    return min(1.0, math.sqrt(_chi2_quantile_99(df) * inverse / (8.0 * math.log(2.0))))


def outside_share(window: Sequence[float], reference: Sequence[float]) -> float:
    """The share of ``window``'s mass in bins where ``reference`` has < 1% of its mass."""
    w = np.asarray(window, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if w.sum() <= 0 or r.sum() <= 0 or w.shape != r.shape:
        return 0.0
    empty = (r / r.sum()) < REFERENCE_EMPTY_SHARE
    return float(w[empty].sum() / w.sum())


def reference_of(previous_stats: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """What a window is compared with: the lineage's merged reference, else the last window."""
    if not previous_stats:
        return {}
    return previous_stats.get("reference") or previous_stats


def _window_histogram(
    feature: schema_pb2.Feature,
    config: DatasetConfig,
    rows: Sequence[Row],
    statistics: Mapping[str, Any],
    edges: Sequence[float],
) -> dict[str, Any]:
    """The window's histogram of ``feature`` on ``edges`` (re-binned when they differ)."""
    now = statistics["features"][feature.name].get("histogram")
    if now and now.get("edges") == list(edges):
        return now
    return feature_stats(
        feature, kind_name(config, feature.name), column(rows, feature.name), edges
    )["histogram"]


def drift_distances(
    rows: Sequence[Row],
    config: DatasetConfig,
    previous_stats: Mapping[str, Any],
    statistics: Mapping[str, Any] | None = None,
    schema: schema_pb2.Schema | None = None,
) -> dict[str, dict[str, Any]]:
    """Per-feature distance between ``rows`` and the reference of ``previous_stats``.

    Returns:
        feature -> ``{"metric", "distance", "threshold", "noise_floor",
        "outside_share", "rows", "reference_rows"}`` for every feature that
        both sides have statistics for and whose schema has a drift comparator.
    """
    schema = schema or schema_from_config(config)
    statistics = statistics or compute_statistics(rows, config, schema=schema)
    previous = reference_of(previous_stats).get("features") or {}
    out: dict[str, dict[str, Any]] = {}
    for feature in schema.feature:
        comparator = drift_threshold(feature)
        before = previous.get(feature.name)
        if comparator is None or not before:
            continue
        metric, threshold = comparator
        if is_numeric(feature):
            hist = before.get("histogram")
            if not hist or not hist.get("counts"):
                continue
            now = _window_histogram(feature, config, rows, statistics, hist["edges"])
            p, q = _full_histogram(now), _full_histogram(hist)
            distance = jensen_shannon_distance(p, q)
            bins = sum(1 for a, b in zip(p, q, strict=True) if a > 0 or b > 0)
            outside = outside_share(p, q)
        else:
            freqs = statistics["features"][feature.name].get("frequencies") or {}
            ref = before.get("frequencies") or {}
            distance = l_infinity_distance(freqs, ref)
            keys = sorted(set(freqs) | set(ref))
            p = [freqs.get(k, 0.0) for k in keys]
            q = [ref.get(k, 0.0) for k in keys]
            bins, outside = len(keys), outside_share(p, q)
            now = None
        if distance is None:
            continue
        n = (
            float(sum(p))
            if now is not None
            else float(statistics["features"][feature.name]["count"])
        )
        m = float(sum(q)) if now is not None else float(before.get("count") or 0)
        out[feature.name] = {
            "metric": metric,
            "distance": round(distance, 6),
            "threshold": threshold,
            "noise_floor": round(noise_floor(metric, n, m, bins), 6),
            "outside_share": round(outside, 6),
            "rows": n,
            "reference_rows": m,
        }
    return out


def with_reference(
    statistics: Mapping[str, Any],
    rows: Sequence[Row],
    config: DatasetConfig,
    previous_stats: Mapping[str, Any] | None,
    schema: schema_pb2.Schema | None = None,
) -> dict[str, Any]:
    """``statistics`` plus ``reference``: the previous reference merged with this window.

    Numeric features keep the reference's bin edges (the window is re-binned);
    categorical frequencies are averaged weighted by rows. Once the merged
    count would pass ``REFERENCE_MAX_ROWS``, the older part is scaled down.
    """
    schema = schema or schema_from_config(config)
    previous = reference_of(previous_stats).get("features") or {}
    merged: dict[str, Any] = {}
    for feature in schema.feature:
        if feature.name == config.label.field:
            continue
        now = statistics["features"].get(feature.name) or {}
        before = previous.get(feature.name) or {}
        if is_numeric(feature) and now.get("histogram"):
            old = before.get("histogram")
            edges = old["edges"] if old and old.get("counts") else now["histogram"]["edges"]
            hist = _window_histogram(feature, config, rows, statistics, edges)
            n = float(sum(_full_histogram(hist)))
            m = float(sum(_full_histogram(old))) if old and old.get("counts") else 0.0
            scale = _scale(n, m)
            combined = dict(hist)
            if m:
                for key in ("underflow", "overflow"):
                    combined[key] = old.get(key, 0) * scale + hist.get(key, 0)
                combined["counts"] = [
                    a * scale + b for a, b in zip(old["counts"], hist["counts"], strict=True)
                ]
            merged[feature.name] = {
                "kind": "numeric",
                "count": m * scale + n,
                "histogram": combined,
            }
        elif now.get("frequencies") is not None:
            n = float(now.get("count") or 0)
            m = float(before.get("count") or 0) if before.get("frequencies") else 0.0
            scale = _scale(n, m)
            total = m * scale + n
            keys = set(now["frequencies"]) | set(before.get("frequencies") or {})
            frequencies = (
                {
                    k: (
                        (before.get("frequencies") or {}).get(k, 0.0) * m * scale
                        + now["frequencies"].get(k, 0.0) * n
                    )
                    / total
                    for k in sorted(keys)
                }
                if total
                else {}
            )
            merged[feature.name] = {
                "kind": "categorical",
                "count": total,
                "frequencies": frequencies,
            }
    rows_before = float(reference_of(previous_stats).get("rows") or 0)
    reference = {
        "rows": rows_before * _scale(statistics["rows"], rows_before) + statistics["rows"],
        "features": merged,
    }
    return {**statistics, "reference": reference}


def _scale(n: float, m: float) -> float:
    """The weight of the older ``m`` rows so that ``m * weight + n <= REFERENCE_MAX_ROWS``."""
    if m <= 0 or m + n <= REFERENCE_MAX_ROWS:
        return 1.0
    return max(REFERENCE_MAX_ROWS - n, 0.0) / m
