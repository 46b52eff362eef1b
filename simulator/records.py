"""Record files: reading JSON Lines / CSV rows typed by the dataset config, and writing them.

``read_records`` yields ``(line_number, record, problem)`` per data row; a row
that is not a JSON object comes back as ``(n, None, reason)``. CSV cells are
typed by the config (``coerce_value``); a cell that does not convert stays a
string, so the pipeline's validation sees and dead-letters it instead of the
replay silently fixing or dropping it.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Iterator
from typing import Any

from dataset.config import DatasetConfig

_JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
_CSV_SUFFIXES = (".csv",)
_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}


def coerce_value(value: str, ftype: str) -> Any:
    """Converts a CSV cell to ``ftype`` (int, float, string, bool).

    A cell that does not convert is returned unchanged (as a string), so the
    pipeline's validation sees and dead-letters it instead of the replay
    silently fixing or dropping it.
    """
    text = value.strip()
    try:
        if ftype == "int":
            try:
                return int(text)
            except ValueError:
                number = float(text)
                if number.is_integer():
                    return int(number)
                return value
        if ftype == "float":
            number = float(text)
            return number if math.isfinite(number) else value
        if ftype == "bool":
            low = text.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            return value
    except ValueError:
        return value
    return value


def csv_column_types(config: DatasetConfig) -> dict[str, str]:
    """The type each known CSV column converts to; unknown columns stay strings."""
    types = {f.name: f.type for f in config.features}
    types[config.key_field] = "string"
    types[config.label.field] = config.label.type
    if config.label.join_key:
        types[config.label.join_key] = "string"
    if config.event_time_format == "epoch_millis":
        types[config.event_time_field] = "int"
    elif config.event_time_format == "epoch_seconds":
        types[config.event_time_field] = "float"
    else:
        types[config.event_time_field] = "string"
    return types


def csv_row_to_record(row: dict[str, str | None], config: DatasetConfig) -> dict:
    """Types one CSV row (``csv.DictReader`` dict) by the config; empty cells are missing."""
    types = csv_column_types(config)
    out: dict[str, Any] = {}
    for name, value in row.items():
        if name is None or value is None or value.strip() == "":
            continue  # surplus cells (no header) and empty cells are dropped
        out[name] = coerce_value(value, types.get(name, "string"))
    return out


def file_kind(path: str) -> str:
    """'jsonl' or 'csv' from the file name; ValueError for anything else."""
    low = path.lower()
    if low.endswith(_JSON_SUFFIXES):
        return "jsonl"
    if low.endswith(_CSV_SUFFIXES):
        return "csv"
    raise ValueError(
        f"unknown file type for {path!r}: use JSON Lines ({', '.join(_JSON_SUFFIXES)}) "
        f"or CSV ({', '.join(_CSV_SUFFIXES)})"
    )


def read_records(path: str, config: DatasetConfig) -> Iterator[tuple[int, dict | None, str]]:
    """Returns an iterator of ``(line_number, record, problem)`` per data row (JSONL or CSV).

    ``record`` is None when the row cannot be used; ``problem`` then names why
    (``invalid_json``, ``not_an_object``), else it is ''. Blank lines are skipped.
    """
    kind = file_kind(path)
    if not os.path.exists(path):
        raise ValueError(f"replay file {path!r} does not exist")
    return _iter_records(path, kind, config)


def _iter_records(
    path: str, kind: str, config: DatasetConfig
) -> Iterator[tuple[int, dict | None, str]]:
    with open(path, encoding="utf-8", newline="" if kind == "csv" else None) as f:
        if kind == "csv":
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                raise ValueError(f"{path}: CSV file has no header row")
            for row in reader:
                yield reader.line_num, csv_row_to_record(row, config), ""
            return
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                yield n, None, "invalid_json"
                continue
            if not isinstance(value, dict):
                yield n, None, "not_an_object"
                continue
            yield n, value, ""


def write_records(path: str, records: Iterable[dict], columns: list[str] | None = None) -> int:
    """Writes records as JSON Lines or CSV (by file name); returns the count."""
    kind = file_kind(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8", newline="" if kind == "csv" else None) as f:
        if kind == "csv":
            rows = list(records)
            header = columns or sorted({k for r in rows for k in r})
            writer = csv.DictWriter(f, fieldnames=header, extrasaction="raise")
            writer.writeheader()
            for row in rows:
                writer.writerow(row)
                n += 1
        else:
            for record in records:
                f.write(json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n")
                n += 1
    return n
