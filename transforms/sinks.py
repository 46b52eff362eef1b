"""Write rows to BigQuery with streaming inserts, dead-lettering what fails.

Tables are created (idempotently, schemas from the config) when the
pipeline is launched, so writes use ``CREATE_NEVER``. Rows BigQuery rejects
for a non-transient reason come back from ``WriteToBigQuery`` and are turned
into dead-letter rows naming the step, so they are not lost either.
"""

from __future__ import annotations

import json
import logging

import apache_beam as beam
from apache_beam.io.gcp.bigquery import BigQueryDisposition, WriteToBigQuery
from apache_beam.io.gcp.bigquery_tools import RetryStrategy
from apache_beam.metrics import Metrics

from transforms.validation import dead_letter_row

_LOG = logging.getLogger(__name__)
NAMESPACE = "sinks"


def failed_insert_row(failed, step: str) -> dict:
    """A dead-letter row for one row BigQuery refused: ``(table, row, errors)``."""
    destination, row, errors = failed
    payload = json.dumps(row, sort_keys=True, default=str)
    ids = row if isinstance(row, dict) else {}
    return dead_letter_row(
        payload,
        {"destination": str(destination)},
        f"BigQuery insert into {destination} failed: {errors}",
        step,
        message_id=ids.get("ingestion_id") or ids.get("messageId"),
    )


class _LogDeadLetterFailureFn(beam.DoFn):
    """Last resort: a dead-letter row the dead-letter table refused is logged."""

    def __init__(self):
        self._failed = Metrics.counter(NAMESPACE, "dead_letter_insert_failures")

    def process(self, failed):
        self._failed.inc()
        _LOG.error("Could not write dead-letter row to BigQuery: %s", failed)


def _streaming_insert(table: str, batch_size: int) -> WriteToBigQuery:
    return WriteToBigQuery(
        table=table,
        method=WriteToBigQuery.Method.STREAMING_INSERTS,
        create_disposition=BigQueryDisposition.CREATE_NEVER,
        write_disposition=BigQueryDisposition.WRITE_APPEND,
        insert_retry_strategy=RetryStrategy.RETRY_ON_TRANSIENT_ERROR,
        batch_size=batch_size,
    )


class WriteRows(beam.PTransform):
    """Streams rows into ``table``; returns dead-letter rows for refused inserts."""

    def __init__(self, table: str, batch_size: int = 500):
        super().__init__()
        self._table = table
        self._batch_size = batch_size

    def expand(self, rows):
        result = rows | "StreamingInsert" >> _streaming_insert(self._table, self._batch_size)
        return result.failed_rows_with_errors | "FailedInsertsToDeadLetter" >> beam.Map(
            failed_insert_row, self.label
        )


class WriteDeadLetters(beam.PTransform):
    """Streams dead-letter rows into the dead-letter table; logs what it refuses."""

    def __init__(self, table: str):
        super().__init__()
        self._table = table

    def expand(self, rows):
        result = rows | "StreamingInsert" >> _streaming_insert(self._table, 500)
        return result.failed_rows_with_errors | "LogRefusedDeadLetters" >> beam.ParDo(
            _LogDeadLetterFailureFn()
        )
