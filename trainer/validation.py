"""Data validation before training: a window of training rows against the schema.

The TFX ``ExampleValidator`` pattern without TFDV (which does not install next
to TensorFlow 2.21): the expected data is the ``tensorflow_metadata`` schema
from ``trainer.schema``, statistics come from ``trainer.statistics`` (stored
with the model version, so the next run can compare against them), and
``validate`` checks a batch of training rows. Pure functions, no I/O.

Checks (``check`` names of the anomalies) and their default severity; ``block``
rejects the run (status ``rejected``, rows quarantined), ``warn`` is recorded
with the run and the model and does not block:

========================  =======  ===============================================
check                     default  finds
========================  =======  ===============================================
``too_few_rows``          block    fewer rows than ``min_rows`` (default ``MIN_ROWS``).
``missing_feature``       block    a schema feature absent or NULL in every row.
``unexpected_feature``    block    a column that is neither a schema feature nor a
                                   key/time/lineage column (``LINEAGE_COLUMNS``, the
                                   key field, the join key, ``extra_fields``).
``type_mismatch``         block    a value of the wrong type (a string in a FLOAT).
``low_presence``          block    fewer rows carry the feature than the schema's
                                   ``presence.min_fraction`` (1.0: every row).
``value_count``           block    a list where exactly one scalar is expected.
``out_of_domain``         block    a number outside the config's min/max (or NaN/inf),
                                   a string outside its allowed values.
``label``                 block    missing, mistyped or invalid labels.
``single_class``          block    every label of a classification window is one class
                                   (e.g. a window of night-time traffic): a classifier
                                   cannot learn from it, and a model trained on it could
                                   win the quality gate on its own one-class held-out rows.
``degenerate_feature``    block    a feature that VARIED in the reference is constant
                                   now: a stuck sensor or a defaulted value.
``constant_feature``      warn     a feature constant now and in the reference too (or
                                   with no reference yet): it carries no information,
                                   but nothing changed.
``drift``                 warn     the distribution moved from the reference by more
                                   than the schema's ``drift_comparator`` threshold
                                   (``retraining.drift_threshold``) and more than the
                                   window-size noise floor.
``severe_drift``          block    a distance above ``drift_block_threshold`` (default
                                   ``DRIFT_BLOCK_THRESHOLD``) AND at least half of the
                                   window where the reference has (almost) no mass:
                                   a unit change, a feed swapped for another.
========================  =======  ===============================================

A dataset config overrides any of them::

    validation:
      severity: {degenerate_feature: warn, drift: block}

``block_on_drift=True`` (``--block-on-drift``) makes ``drift`` block.

**Against false positives.** A check that blocks retraining by accident is as
bad as one that misses a broken feed, so none of them reacts to noise:

* "constant" means a spread (max - min) within ``CONSTANT_RTOL`` of the
  magnitude (plus ``CONSTANT_ATOL``): a float column whose std is 1e-16 is
  constant. A feature constant in the reference too is not a stuck feed.
* drift is judged against the model lineage's merged reference, not just the
  previous window (``trainer.statistics.with_reference``): consecutive windows
  shorter than a feature's cycle (hour of day) cover other parts of it, but the
  reference covers all of it. A window inside the reference's range never
  reaches ``severe_drift``.
* a distance below the window-size noise floor (``trainer.statistics.noise_floor``,
  ~99th percentile between two samples of one distribution) is not drift:
  small windows differ more by chance.

Why drift warns by default: the usual reason to retrain is concept drift, and a
moderate feature shift (a season, a new sensor mix) is a reason to retrain,
not to refuse. ``drift_check: false`` on a feature (still accepted) leaves it
out of the drift comparison; with the reference above it is no longer needed
for clock features.

Each anomaly is a dict ``{check, feature, detail, example_ids, severity}``
(``example_ids``: up to ``MAX_EXAMPLE_IDS`` offending rows' ``example_id``, or
``row <index>`` when a row has none); ``severity`` is ``error`` (blocks) or
``warning``.

A ``trainer.data.RowTable`` is checked column-wise: numpy/Arrow find the rows
any check could flag (missing, mistyped, outside the domain), and the
per-value checks run on those rows only, so the anomalies are the same as
for the rows as dicts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tensorflow_metadata.proto.v0 import schema_pb2

from dataset.config import VALIDATION_CHECKS, DatasetConfig
from trainer.data import RowTable
from trainer.schema import (
    MISSING,
    domain_bounds,
    in_domain,
    is_list,
    is_missing,
    schema_from_config,
    type_name,
    type_ok,
)
from trainer.statistics import (
    column,
    compute_statistics,
    drift_distances,
    jensen_shannon_distance,  # noqa: F401 (re-exported)
    l_infinity_distance,  # noqa: F401 (re-exported)
    numeric_column,
    reference_of,
    with_reference,
)

MIN_ROWS = 200
MAX_EXAMPLE_IDS = 20
DRIFT_BLOCK_THRESHOLD = 0.75
# At least this share of the window outside the reference's range for severe_drift.
SEVERE_OUTSIDE_SHARE = 0.5
CONSTANT_RTOL = 1e-9
CONSTANT_ATOL = 1e-12
LINEAGE_COLUMNS = (
    "example_id",
    "event_time",
    "label_time",
    "label_source",
    "ingestion_id",
    "ingested_at",
)

CHECKS = VALIDATION_CHECKS
BLOCK = "block"
WARN = "warn"
DEFAULT_SEVERITY: dict[str, str] = {
    **{check: BLOCK for check in CHECKS},
    "constant_feature": WARN,
    "drift": WARN,
}
ERROR = "error"
WARNING = "warning"

Row = Mapping[str, Any]


def severities(config: DatasetConfig, block_on_drift: bool = False) -> dict[str, str]:
    """Each check's severity: the defaults, the config's overrides, then ``block_on_drift``."""
    out = {check: config.validation.severity_of(check, DEFAULT_SEVERITY[check]) for check in CHECKS}
    if block_on_drift:
        out["drift"] = BLOCK
    return out


def is_constant(lo: float | None, hi: float | None) -> bool:
    """Whether values between ``lo`` and ``hi`` are one value up to float noise."""
    if lo is None or hi is None:
        return False
    return hi - lo <= CONSTANT_ATOL + CONSTANT_RTOL * max(abs(lo), abs(hi))


def _row_id(row: Row, index: int) -> str:
    example_id = row.get("example_id")
    return str(example_id) if example_id not in (None, "") else f"row {index}"


class _RowIds:
    """``_row_id`` of a ``RowTable``'s rows, looked up only for the rows an anomaly names."""

    def __init__(self, rows: RowTable):
        self.values = rows.column("example_id")

    def __getitem__(self, index: int) -> str:
        value = None if self.values is None else self.values[int(index)].as_py()
        return str(value) if value not in (None, "") else f"row {index}"


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


def _suspects(feature: schema_pb2.Feature, values: pa.Array) -> np.ndarray | None:
    """Positions of an Arrow column that any check of ``_check_column`` could flag.

    A superset (missing, mistyped or outside the domain), found column-wise; None
    for a column only the per-value checks can judge (lists, mixed types, bools).
    """
    numeric = numeric_column(feature, values)
    if numeric is not None:
        present, typed, numbers = numeric
        ok = typed & np.isfinite(numbers)
        lo, hi = domain_bounds(feature)
        if lo is not None:
            ok &= numbers >= lo
        if hi is not None:
            ok &= numbers <= hi
        return np.flatnonzero(~(present & ok))
    if feature.type != schema_pb2.BYTES or feature.WhichOneof("domain_info") == "bool_domain":
        return None
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        return None
    bad = values.is_null()
    if feature.WhichOneof("domain_info") == "string_domain":
        allowed = pa.array(list(feature.string_domain.value), type=values.type)
        bad = pc.or_(bad, pc.invert(pc.is_in(values, value_set=allowed)))
    return np.flatnonzero(bad.fill_null(True).to_numpy(zero_copy_only=False))


def _check_arrow_column(
    feature: schema_pb2.Feature, values: pa.Array, ids: Any, is_label: bool
) -> list[dict[str, Any]]:
    """``_check_column`` of an Arrow column: the per-value checks run on the suspects only."""
    suspects = _suspects(feature, values)
    if suspects is None:
        return _check_column(feature, values.to_pylist(), ids, is_label)
    sub = values.take(pa.array(suspects, type=pa.int64())).to_pylist()
    return _check_column(feature, sub, ids, is_label, n=len(values), positions=suspects)


def _check_column(
    feature: schema_pb2.Feature,
    column: Sequence[Any],
    ids: Any,
    is_label: bool,
    n: int | None = None,
    positions: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """Presence, value count, type and domain anomalies of one column.

    ``column`` may hold only some rows' values (``positions``: their row
    indexes; ``n``: the number of rows), when the others are known to pass.
    """
    name = feature.name
    n = len(column) if n is None else n
    missing = [i for i, v in enumerate(column) if is_missing(v)]
    if len(missing) == n:
        absent = all(v is MISSING for v in column)
        what = "absent from every row" if absent else "NULL in every row"
        return [_anomaly("label" if is_label else "missing_feature", name, what)]

    anomalies: list[dict[str, Any]] = []

    def flag(check: str, detail: str, rows: Sequence[int]) -> None:
        """One anomaly of this column (always ``label`` for the label) naming ``rows``."""
        shown = rows[:MAX_EXAMPLE_IDS]  # _anomaly keeps no more
        at = shown if positions is None else [positions[i] for i in shown]
        check = "label" if is_label else check
        anomalies.append(_anomaly(check, name, detail, [ids[i] for i in at]))

    present_fraction = (n - len(missing)) / n
    if missing and present_fraction < feature.presence.min_fraction:
        detail = (
            f"present in {present_fraction:.2%} of rows ({n - len(missing)}/{n}); "
            f"schema requires {feature.presence.min_fraction:.0%}"
        )
        if is_label:
            detail = f"label missing in {len(missing)} of {n} rows"
        flag("low_presence", detail, missing)

    multi = [i for i, v in enumerate(column) if is_list(v)]
    if multi:
        counts = sorted({len(column[i]) for i in multi})
        flag(
            "value_count",
            f"{len(multi)} rows carry a list (lengths {counts[:5]}) where the schema "
            f"expects exactly {feature.value_count.min} scalar value",
            multi,
        )

    candidates = [i for i, v in enumerate(column) if not is_missing(v) and not is_list(v)]
    wrong = [i for i in candidates if not type_ok(feature, column[i])]
    if wrong:
        kinds = sorted({type(column[i]).__name__ for i in wrong})
        flag(
            "type_mismatch",
            f"{len(wrong)} values are not {type_name(feature)} (found {', '.join(kinds)}: "
            f"{_examples([column[i] for i in wrong])})",
            wrong,
        )
    wrong_set = set(wrong)
    bad: dict[str, list[int]] = {}
    for i in candidates:
        if i in wrong_set:
            continue
        why = in_domain(feature, column[i])
        if why is not None:
            bad.setdefault(why, []).append(i)
    if bad:
        indexes = sorted(i for group in bad.values() for i in group)
        reasons = ", ".join(f"{len(group)} {why}" for why, group in bad.items())
        domain = _domain_text(feature)
        flag(
            "out_of_domain",
            f"{len(indexes)} values outside the domain {domain} ({reasons}: "
            f"{_examples([column[i] for i in indexes])})",
            indexes,
        )
    return anomalies


def _domain_text(feature: schema_pb2.Feature) -> str:
    which = feature.WhichOneof("domain_info")
    if which == "string_domain":
        return "{" + ", ".join(feature.string_domain.value) + "}"
    lo, hi = domain_bounds(feature)
    return f"[{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}]"


def _expected_columns(config: DatasetConfig, schema: schema_pb2.Schema) -> set[str]:
    names = {f.name for f in schema.feature}
    names.update(LINEAGE_COLUMNS)
    names.add(config.key_field)
    names.add(config.event_time_field)
    if config.label.join_key:
        names.add(config.label.join_key)
    names.update(config.extra_fields)
    names.update(spec.name for spec in config.history_features)  # model.history values
    return names


def _constant_features(
    statistics: Mapping[str, Any], previous_stats: Mapping[str, Any] | None
) -> list[dict[str, Any]]:
    """Constant features: ``degenerate_feature`` if they varied in the reference."""
    reference = reference_of(previous_stats).get("features") or {}
    out = []
    for name, now in statistics["features"].items():
        if now.get("count", 0) - now.get("invalid_type", 0) < 2:
            continue
        before = reference.get(name) or {}
        if now.get("kind") == "numeric":
            if not is_constant(now.get("min"), now.get("max")):
                continue
            value = f"{now['min']:g}"
            varied = _numeric_varied(before)
            was = "" if varied is None else f" (the reference spans {varied})"
        else:
            if now.get("unique") != 1:
                continue
            value = repr(next(iter(now["frequencies"])))
            freqs = before.get("frequencies") or {}
            varied = (
                f"{len(freqs)} values" if len(freqs) > 1 and max(freqs.values()) < 0.99 else None
            )
            was = "" if varied is None else f" (the reference has {varied})"
        if varied is not None:
            out.append(
                _anomaly(
                    "degenerate_feature",
                    name,
                    f"every value is {value}{was}: a stuck or defaulted feed",
                )
            )
        else:
            detail = f"every value is {value}"
            detail += (
                ", as in the reference: the feature carries no information"
                if before
                else " (no reference yet): the feature carries no information"
            )
            out.append(_anomaly("constant_feature", name, detail))
    return out


def _numeric_varied(before: Mapping[str, Any]) -> str | None:
    """``"lo .. hi"`` if a numeric reference entry varied beyond float noise, else None."""
    if before.get("min") is not None and before.get("max") is not None:
        lo, hi = before["min"], before["max"]
        return None if is_constant(lo, hi) else f"{lo:g} .. {hi:g}"
    hist = before.get("histogram")
    if not hist:
        return None
    full = [hist.get("underflow", 0), *hist.get("counts", []), hist.get("overflow", 0)]
    total = sum(full)
    if total <= 0 or max(full) / total >= 0.99:
        return None  # (almost) all in one bin: not evidence that it varied
    edges = hist["edges"]
    return f"{edges[0]:g} .. {edges[-1]:g} over several bins"


def _drift_anomalies(
    drift: Mapping[str, Mapping[str, Any]], drift_block_threshold: float | None
) -> list[dict[str, Any]]:
    out = []
    for name, d in drift.items():
        limit = max(d["threshold"], d["noise_floor"])
        if d["distance"] <= limit:
            continue
        detail = (
            f"{d['metric']} {d['distance']:.3f} from the reference ({d['reference_rows']:.0f} "
            f"rows) exceeds {d['threshold']:g} and the noise floor {d['noise_floor']:.3f} "
            f"of {d['rows']:.0f} rows; {d['outside_share']:.0%} of the window lies where "
            "the reference has no mass"
        )
        severe = (
            drift_block_threshold is not None
            and d["distance"] > max(drift_block_threshold, d["noise_floor"])
            and d["outside_share"] >= SEVERE_OUTSIDE_SHARE
        )
        if severe:
            detail += f"; above the blocking threshold {drift_block_threshold:g}"
        out.append(_anomaly("severe_drift" if severe else "drift", name, detail))
    return out


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
        config: the dataset config (``validation.severity`` overrides severities).
        previous_stats: the current model's statistics (with its ``reference``);
            None: no drift check, and constant features only warn.
        schema: the schema (default ``schema_from_config(config)``).
        min_rows: fewer rows is a ``too_few_rows`` anomaly.
        block_on_drift: make ``drift`` block.
        drift_block_threshold: the distance above which a shift out of the
            reference's range is ``severe_drift``; None disables that check.

    Returns:
        ``ValidationResult(ok, anomalies, statistics, drift)``; ``statistics``
        carries the merged ``reference`` for the next run.
    """
    schema = schema or schema_from_config(config)
    statistics = compute_statistics(rows, config, schema=schema)
    level = severities(config, block_on_drift)
    anomalies: list[dict[str, Any]] = []
    n = len(rows)
    if n < min_rows:
        anomalies.append(
            _anomaly("too_few_rows", None, f"{n} rows; at least {min_rows} are needed")
        )
    if n == 0:
        return _result(anomalies, statistics, {}, level)

    expected = _expected_columns(config, schema)
    unexpected: dict[str, Sequence[int]] = {}
    if isinstance(rows, RowTable):
        ids: Any = _RowIds(rows)
        for key in rows.column_names:
            if key not in expected:
                present = ~rows.column(key).is_null().to_numpy(zero_copy_only=False)
                if present.any():
                    unexpected[key] = np.flatnonzero(present)
    else:
        ids = [_row_id(row, i) for i, row in enumerate(rows)]
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
                [ids[i] for i in indexes[:MAX_EXAMPLE_IDS]],
            )
        )

    for feature in schema.feature:
        is_label = feature.name == config.label.field
        values = column(rows, feature.name)
        if isinstance(values, pa.Array):
            anomalies.extend(_check_arrow_column(feature, values, ids, is_label))
        else:
            anomalies.extend(_check_column(feature, values, ids, is_label))

    if config.label.task == "binary_classification":
        label_feature = next(f for f in schema.feature if f.name == config.label.field)
        classes = _classes(label_feature, column(rows, config.label.field))
        if len(classes) == 1:
            anomalies.append(
                _anomaly(
                    "single_class",
                    config.label.field,
                    f"every label is {classes.pop()}: a classifier cannot learn from one class",
                )
            )

    drift: dict[str, dict[str, Any]] = {}
    if previous_stats:
        drift = drift_distances(rows, config, previous_stats, statistics, schema)
        anomalies.extend(_drift_anomalies(drift, drift_block_threshold))
    anomalies.extend(_constant_features(statistics, previous_stats))
    statistics = with_reference(statistics, rows, config, previous_stats, schema)
    return _result(anomalies, statistics, drift, level)


def _classes(feature: schema_pb2.Feature, values: Sequence[Any] | pa.Array) -> set[int]:
    """The distinct valid labels (``int(float(v))``) of a binary classification column."""
    if isinstance(values, pa.Array):
        suspects = _suspects(feature, values)
        numeric = numeric_column(feature, values)
        if suspects is not None and numeric is not None:
            ok = np.ones(len(values), dtype=bool)
            ok[suspects] = False
            return {int(c) for c in np.unique(np.trunc(numeric[2][ok]))}
        values = values.to_pylist()
    return {
        int(float(v))
        for v in values
        if not is_missing(v)
        and not is_list(v)
        and type_ok(feature, v)
        and in_domain(feature, v) is None
    }


def _result(
    anomalies: list[dict[str, Any]],
    statistics: dict[str, Any],
    drift: dict[str, dict[str, Any]],
    level: Mapping[str, str],
) -> ValidationResult:
    for a in anomalies:
        a["severity"] = ERROR if level[a["check"]] == BLOCK else WARNING
    ok = not any(a["severity"] == ERROR for a in anomalies)
    return ValidationResult(ok, anomalies, statistics, drift)
