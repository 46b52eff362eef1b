"""Reconciliation: where did every published message id end up?

Each message id the publisher wrote to its ids file (``simulator.publish
--ids-file``) must be found in exactly one of these places:

- the training-examples table (``ingestion_id``: the feature message of a row),
- the predictions table (``example_id``: a valid record that has no label yet),
- the dead-letter table (``messageId``, with the reason in ``errorMessage``).

Redelivered copies of a message share its id; they are "dropped duplicates"
and must not add rows: ``double_counted`` counts ids with more than one
training row. Label messages of a ``label.source: separate`` config are not
in any row by their own id; the number of joined labels
(``label_source = 'message'`` rows) is credited to them by count.

    python -m local.reconcile --project local-project --bq_dataset traffic_local \\
        --config configs/traffic.yaml --ids-file .local/run/published-ids.txt \\
        [--stats-file .local/run/publisher-stats.json]

prints one JSON object (``unaccounted`` and up to 10 ``unaccounted_examples``)
and exits 0 when every id is accounted for, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from dataset.config import DatasetConfig, load_config

EXAMPLES = 10


def read_ids(path: str | os.PathLike[str]) -> list[str]:
    """Published ids, one per line, first occurrence order; [] if the file is missing."""
    p = Path(path)
    if not p.exists():
        return []
    return list(dict.fromkeys(line.strip() for line in p.read_text().splitlines() if line.strip()))


def reconcile(
    published: Sequence[str],
    training_ids: Iterable[str],
    prediction_ids: Iterable[str],
    dead_letter_ids: Iterable[str],
    joined_labels: int = 0,
    duplicates_published: int | None = None,
    double_counted: int = 0,
) -> dict[str, Any]:
    """Accounts for every published id (pure; the inputs come from the tables).

    Args:
        published: the ids the publisher sent (each once).
        training_ids: ``ingestion_id`` of every training row.
        prediction_ids: ``example_id`` of every prediction row.
        dead_letter_ids: ``messageId`` of every dead-letter row.
        joined_labels: training rows joined from a separate label message.
        duplicates_published: redelivered copies the publisher sent (reported).
        double_counted: ids with more than one training row.

    Returns:
        Counts per place, ``unaccounted`` and ``unaccounted_examples``.
    """
    training = set(training_ids)
    predicted = set(prediction_ids)
    dead = set(dead_letter_ids)
    in_training = in_dead = in_predictions = 0
    missing: list[str] = []
    for message_id in published:
        if message_id in training:
            in_training += 1
        elif message_id in dead:
            in_dead += 1
        elif message_id in predicted:
            in_predictions += 1
        else:
            missing.append(message_id)
    labels_credited = min(joined_labels, len(missing))
    unaccounted = len(missing) - labels_credited
    return {
        "published_ids": len(published),
        "accounted_training": in_training,
        "accounted_dead_letter": in_dead,
        "accounted_predictions_only": in_predictions,
        "accounted_joined_labels": labels_credited,
        "duplicates_published": duplicates_published,
        "double_counted": double_counted,
        "unaccounted": unaccounted,
        # With separate labels, which missing ids the credited labels are is unknown.
        "unaccounted_examples": missing[:EXAMPLES] if unaccounted else [],
    }


def _column(client, table: str, column: str, where: str = "TRUE") -> list[str]:
    from google.api_core.exceptions import NotFound

    try:
        rows = client.query(f"SELECT {column} AS v FROM `{table}` WHERE {where}").result()
    except NotFound:
        return []
    return [str(r["v"]) for r in rows if r["v"] is not None]


def reconcile_tables(
    client,
    project: str,
    dataset: str,
    config: DatasetConfig,
    published: Sequence[str],
    duplicates_published: int | None = None,
) -> dict[str, Any]:
    """``reconcile`` over the run's BigQuery tables."""
    t = config.tables

    def table(name: str) -> str:
        return f"{project}.{dataset}.{name}"

    training = _column(client, table(t.training_examples), "ingestion_id")
    joined = 0
    if config.label.source == "separate":
        joined = len(
            _column(client, table(t.training_examples), "example_id", "label_source = 'message'")
        )
    return reconcile(
        published,
        training,
        _column(client, table(t.predictions), "example_id"),
        _column(client, table(t.dead_letter), "messageId"),
        joined_labels=joined,
        duplicates_published=duplicates_published,
        double_counted=len(training) - len(set(training)),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: one JSON line; exit 0 if nothing is unaccounted, else 1."""
    parser = argparse.ArgumentParser(prog="python -m local.reconcile", description=__doc__)
    parser.add_argument("--project", required=True)
    parser.add_argument("--bq_dataset", required=True)
    parser.add_argument("--config", required=True, help="dataset config (table names, labels)")
    parser.add_argument("--ids-file", required=True, help="simulator.publish --ids-file output")
    parser.add_argument("--stats-file", help="the publisher's stats (for duplicates_published)")
    args = parser.parse_args(argv)
    from dataset.resources import bigquery_client
    from local.summary import read_stats

    config = load_config(args.config)
    stats = read_stats(args.stats_file) if args.stats_file else {}
    result = reconcile_tables(
        bigquery_client(args.project),
        args.project,
        args.bq_dataset,
        config,
        read_ids(args.ids_file),
        stats.get("duplicates_published"),
    )
    print(json.dumps(result, separators=(",", ":")), flush=True)
    return 0 if result["unaccounted"] == 0 and result["double_counted"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
