"""An independent, strict validator of payloads against a dataset config (test oracle).

Deliberately separate from the pipeline's validation code, so the simulator
tests do not just agree with whatever that code does.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

from dataset.config import DatasetConfig


def _check_value(spec_type: str, value: Any, lo=None, hi=None, values=None) -> str | None:
    if isinstance(value, (list, dict)) or value is None:
        return f"not a scalar: {value!r}"
    if spec_type == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            return f"not an int: {value!r}"
    elif spec_type == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"not a number: {value!r}"
        if not math.isfinite(value):
            return f"not finite: {value!r}"
    elif spec_type == "string":
        if not isinstance(value, str):
            return f"not a string: {value!r}"
        if values is not None and value not in values:
            return f"{value!r} not in {values}"
    elif spec_type == "bool":
        if not isinstance(value, bool):
            return f"not a bool: {value!r}"
    if spec_type in ("int", "float"):
        if lo is not None and value < lo:
            return f"{value!r} < min {lo}"
        if hi is not None and value > hi:
            return f"{value!r} > max {hi}"
    return None


def _check_time(value: Any, fmt: str) -> str | None:
    if fmt == "iso8601":
        if not isinstance(value, str) or not value.endswith("Z"):
            return f"bad ISO time {value!r}"
        try:
            dt.datetime.fromisoformat(value)
        except ValueError:
            return f"bad ISO time {value!r}"
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"bad epoch time {value!r}"
    return None


def problems(data: bytes, config: DatasetConfig) -> list[str]:
    """Everything wrong with a message payload (empty list: valid)."""
    try:
        payload = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return [f"not JSON: {e}"]
    if not isinstance(payload, dict):
        return [f"not an object: {type(payload).__name__}"]
    out = []
    label = config.label
    t_problem = (
        _check_time(payload[config.event_time_field], config.event_time_format)
        if config.event_time_field in payload
        else "missing event time"
    )
    if t_problem:
        out.append(t_problem)
    if label.source == "separate" and label.field in payload:  # a label message
        allowed = {config.event_time_field, label.field, label.join_key}
        extra = set(payload) - allowed
        if extra:
            out.append(f"unexpected {sorted(extra)}")
        if not isinstance(payload.get(label.join_key), str):
            out.append("missing join key")
        if payload[label.field] not in (0, 1) or isinstance(payload[label.field], bool):
            out.append("bad label")
        return out
    allowed = {config.key_field, config.event_time_field, *config.feature_names}
    allowed.update(config.extra_fields)
    if label.source == "inline":
        allowed.add(label.field)
    if label.join_key:
        allowed.add(label.join_key)
        if not isinstance(payload.get(label.join_key), str):
            out.append("missing join key")
    extra = set(payload) - allowed
    if extra:
        out.append(f"unexpected {sorted(extra)}")
    key = payload.get(config.key_field)
    if not isinstance(key, str) or not key:
        out.append(f"bad key {key!r}")
    for spec in config.features:
        if spec.name not in payload:
            out.append(f"missing {spec.name}")
            continue
        p = _check_value(spec.type, payload[spec.name], spec.min, spec.max, spec.values)
        if p:
            out.append(f"{spec.name}: {p}")
    if label.source == "inline":
        if label.field not in payload:
            out.append("missing label")
        else:
            p = _check_value(label.type, payload[label.field], label.min, label.max)
            if p or payload[label.field] not in (0, 1):
                out.append(f"bad label {payload[label.field]!r}")
    return out
