"""The config's ``history_features:``: features computed from a key's previous events.

Each entry names a feature computed, for every feature record, from the
*previous* events of the same key (never the record itself)::

    history_features:
      occupancy_mean_5: {of: occupancy, agg: mean, last: 5}
      congested_rate_10: {agg: label_mean, last: 10}
      last_congested: {agg: last_label}

* ``agg: mean | min | max | last`` of the numeric (or bool) feature ``of``
  over the key's previous ``last`` events (default 1);
* ``agg: label_mean`` (the label rate, for classification) over the key's
  previous ``last`` labels, and ``agg: last_label``: the key's previous label.
  Both need ``label.source: inline`` (the previous event's label is known when
  that event passed); with separate labels they are rejected.

``model.history`` computes the values; ``model.features`` encodes them after
the raw features, in this section's order.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

FEATURE_AGGS = ("mean", "min", "max", "last")
LABEL_AGGS = ("label_mean", "last_label")
HISTORY_AGGS = FEATURE_AGGS + LABEL_AGGS
MAX_HISTORY_EVENTS = 1000
# Columns every training row has besides the config's fields (dataset.tables).
TRAINING_LINEAGE_COLUMNS = (
    "example_id",
    "event_time",
    "label_time",
    "label_source",
    "ingestion_id",
    "ingested_at",
)
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")

Fail = Callable[[str, str], ValueError]


@dataclasses.dataclass(frozen=True)
class HistoryFeatureSpec:
    """One history feature: ``agg`` over the key's previous ``last`` events.

    ``of`` is the source feature (``FEATURE_AGGS``); None for ``LABEL_AGGS``.
    """

    name: str
    agg: str
    of: str | None = None
    last: int = 1

    @property
    def uses_label(self) -> bool:
        return self.agg in LABEL_AGGS


def parse_history_features(
    raw: Any,
    feature_types: Mapping[str, str],
    label_source: str,
    taken: set[str],
    fail: Fail,
) -> tuple[HistoryFeatureSpec, ...]:
    """Validates the ``history_features`` mapping (None: no history features).

    Args:
        raw: the parsed YAML value.
        feature_types: the config's features, name -> type.
        label_source: ``label.source``.
        taken: names already used by fields and features.
        fail: builds the ``ValueError`` for ``(path, message)``.
    """
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise fail("history_features", f"expected a mapping, got {type(raw).__name__}")
    out = []
    for name, entry in raw.items():
        name = str(name)
        path = f"history_features.{name}"
        if not _NAME_RE.match(name):
            raise fail(path, "history feature names must be letters, digits and underscores")
        if name in taken:
            raise fail(path, f"{name!r} is already a field or feature name")
        if not isinstance(entry, Mapping):
            raise fail(path, f"expected a mapping, got {type(entry).__name__}")
        extra = sorted(set(entry) - {"of", "agg", "last"})
        if extra:
            raise fail(f"{path}.{extra[0]}", "unknown setting (allowed: agg, last, of)")
        agg = entry.get("agg")
        if agg not in HISTORY_AGGS:
            raise fail(f"{path}.agg", f"must be one of {', '.join(HISTORY_AGGS)}; got {agg!r}")
        last = entry.get("last", 1)
        if (
            isinstance(last, bool)
            or not isinstance(last, int)
            or not 1 <= last <= MAX_HISTORY_EVENTS
        ):
            raise fail(
                f"{path}.last", f"expected an integer in [1, {MAX_HISTORY_EVENTS}], got {last!r}"
            )
        of = entry.get("of")
        if agg in LABEL_AGGS:
            if of is not None:
                raise fail(f"{path}.of", f"agg {agg} reads the label; leave 'of' out")
            if label_source != "inline":
                raise fail(
                    f"{path}.agg",
                    f"{agg} needs label.source: inline (with separate labels the previous "
                    "event's label may not have landed when the next event is predicted)",
                )
            if agg == "last_label" and last != 1:
                raise fail(f"{path}.last", "last_label is the previous label; leave 'last' out")
        else:
            if of not in feature_types:
                raise fail(f"{path}.of", f"expected one of the config's features, got {of!r}")
            if feature_types[of] not in ("int", "float", "bool"):
                raise fail(f"{path}.of", f"{of!r} is a {feature_types[of]}; expected a number")
        taken.add(name)
        out.append(HistoryFeatureSpec(name=name, agg=agg, of=of, last=last))
    return tuple(out)
