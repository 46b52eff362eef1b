"""History from a user's file: its first rows become training rows, the rest is replayed.

``split_file`` reads a JSON Lines or CSV file described by a dataset config
(``simulator.records.read_records``, so CSV cells are typed as the replay
types them), validates every row with the pipeline's own
``transforms.validation.validate_payload`` and cuts the file after its
``n_rows``-th valid row:

* the valid rows before the cut become the training-table rows the pipeline
  would write (``transforms.labeling.training_row``). Inline labels: one row
  per labeled feature row. Separate labels (``label.source: separate``): a
  feature row is joined with its label message when the label lands within
  ``max_delay_seconds``, also when that label comes after the cut (it is then
  taken out of the replay, so the pipeline never sees a label for an
  impression it did not see); otherwise it becomes a negative
  (``negative_on_timeout``) or is left out. Invalid rows before the cut are
  counted and dropped, as the pipeline would dead-letter them.
* the file's lines after the cut (minus the labels taken) are copied verbatim,
  in order, to the rest file: what the live loop replays. CSV keeps its header.

The cut is by valid rows, so ``n_rows`` counts messages (feature and label
messages alike), not training examples.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

from dataset.config import DatasetConfig
from simulator.records import file_kind, read_records


@dataclasses.dataclass
class FileSplit:
    """The outcome of ``split_file``: training rows and what is left to replay."""

    training_rows: list[dict[str, Any]]
    rest_lines: list[str]
    rows_taken: int = 0
    lines_taken: int = 0
    rest_rows: int = 0
    invalid_rows: int = 0
    unlabeled_rows: int = 0
    negatives_on_timeout: int = 0
    labels_from_rest: int = 0
    orphan_labels: int = 0

    def counts(self) -> dict[str, int]:
        """The counters (everything but the rows and lines)."""
        out = dataclasses.asdict(self)
        del out["training_rows"], out["rest_lines"]
        out["training_rows"] = len(self.training_rows)
        return out


def _validate(record: dict | None, config: DatasetConfig, message_id: str):
    from transforms.validation import RecordError, validate_payload

    if record is None:
        return None
    try:
        return validate_payload(dict(record), config, message_id)
    except RecordError:
        return None


def split_file(
    path: str, config: DatasetConfig, n_rows: int, *, ingested_at: float, prefix: str
) -> FileSplit:
    """Cuts ``path`` after its ``n_rows``-th valid row (see the module docstring).

    Args:
        path: a .jsonl/.ndjson/.json or .csv file described by ``config``.
        config: the dataset config.
        n_rows: valid rows that become training data (at least 1).
        ingested_at: epoch seconds written as the rows' ``ingested_at``.
        prefix: message-id prefix for the validated rows (``<prefix>-<line>``).

    Raises:
        ValueError: a missing or unknown file, ``n_rows`` < 1, fewer than
            ``n_rows`` valid rows, or no rows left to replay after them.
    """
    from model.history import attach_history
    from transforms.labeling import training_row

    if n_rows < 1:
        raise ValueError(f"--rows must be at least 1, got {n_rows}")
    records = list(read_records(path, config))
    kind = file_kind(path)
    with open(path, encoding="utf-8", newline="" if kind == "csv" else None) as f:
        lines = f.readlines()
    split = FileSplit(training_rows=[], rest_lines=[])
    taken: list[dict[str, Any]] = []
    cut = None  # index in ``records`` of the first row to replay
    for i, (line_no, record, _) in enumerate(records):
        valid = _validate(record, config, f"{prefix}-{line_no}")
        if valid is None:
            split.invalid_rows += 1
            continue
        taken.append(valid)
        if len(taken) == n_rows:
            cut = i + 1
            break
    if cut is None:
        raise ValueError(
            f"{path} has only {len(taken)} valid rows; --bootstrap-rows must be smaller "
            f"(it was {n_rows}) so that some rows are left to replay"
        )
    split.rows_taken = len(taken)
    taken = attach_history(config, taken)  # history features, as the stream computes them
    split.lines_taken = records[cut - 1][0]

    consumed: set[int] = set()  # indices in ``records`` of labels joined from the rest
    label_spec = config.label
    if label_spec.source == "inline":
        for rec in taken:
            if rec["kind"] == "features" and rec["label"] is not None:
                split.training_rows.append(
                    training_row(
                        config, rec, rec["label"], rec["event_time"], "inline", now=ingested_at
                    )
                )
            else:
                split.unlabeled_rows += 1
    else:
        _join_separate(config, taken, records, cut, prefix, ingested_at, split, consumed)

    if kind == "csv":
        # csv line numbers are where a row ends; the header is what precedes the first row.
        header_end = _row_start(records, 0, kind) - 1
        split.rest_lines.extend(lines[:header_end])
    for i in range(cut, len(records)):
        if i in consumed:
            continue
        start = _row_start(records, i, kind)
        split.rest_lines.extend(lines[start - 1 : records[i][0]])
        split.rest_rows += 1
    if split.rest_rows == 0:
        raise ValueError(
            f"{path}: no rows are left to replay after the first {n_rows} valid rows; "
            "use a smaller --bootstrap-rows"
        )
    return split


def _row_start(records: Sequence[tuple[int, Any, str]], i: int, kind: str) -> int:
    """The first physical line of record ``i`` (CSV rows may span lines)."""
    if kind != "csv":
        return records[i][0]
    if i == 0:
        return 2  # after a one-line header
    return records[i - 1][0] + 1


def _join_separate(
    config: DatasetConfig,
    taken: list[dict[str, Any]],
    records: Sequence[tuple[int, dict | None, str]],
    cut: int,
    prefix: str,
    ingested_at: float,
    split: FileSplit,
    consumed: set[int],
) -> None:
    """Separate labels: join the taken feature rows with their labels (see module doc)."""
    from transforms.labeling import training_row

    max_delay = config.label.max_delay_seconds
    features: dict[str, dict[str, Any]] = {}
    labels: dict[str, dict[str, Any]] = {}
    for rec in taken:
        if rec["kind"] == "features":
            features.setdefault(rec["join_id"], rec)
        else:
            labels.setdefault(rec["join_id"], rec)
    for join_id, label in list(labels.items()):
        feats = features.get(join_id)
        if feats is not None and abs(label["event_time"] - feats["event_time"]) <= max_delay:
            split.training_rows.append(
                training_row(
                    config, feats, label["label"], label["event_time"], "message", now=ingested_at
                )
            )
            del features[join_id]
        else:
            split.orphan_labels += 1
    # Labels that land after the cut for the taken impressions.
    if features:
        for i in range(cut, len(records)):
            line_no, record, _ = records[i]
            if record is None or config.label.field not in record:
                continue
            rec = _validate(record, config, f"{prefix}-{line_no}")
            if rec is None or rec["kind"] != "label" or rec["join_id"] not in features:
                continue
            feats = features[rec["join_id"]]
            if rec["event_time"] - feats["event_time"] > max_delay:
                continue
            split.training_rows.append(
                training_row(
                    config, feats, rec["label"], rec["event_time"], "message", now=ingested_at
                )
            )
            split.labels_from_rest += 1
            consumed.add(i)
            del features[rec["join_id"]]
            if not features:
                break
    for feats in features.values():
        if config.label.negative_on_timeout:
            split.training_rows.append(
                training_row(
                    config, feats, 0, feats["event_time"] + max_delay, "timeout", now=ingested_at
                )
            )
            split.negatives_on_timeout += 1
        else:
            split.unlabeled_rows += 1
    split.training_rows.sort(key=lambda r: (r["event_time"], str(r["example_id"])))


def write_rest(path: str, lines: Sequence[str]) -> None:
    """Writes the lines to replay (same format as the source file)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.writelines(lines)
