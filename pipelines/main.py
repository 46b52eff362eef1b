"""Entry point: ``python -m pipelines.main [options]``.

Used by ``run_local.sh`` (DirectRunner against the emulators) and by the
flex template (DataflowRunner). It validates the options, makes sure the
output tables exist, builds the pipeline and runs it until cancelled.
"""

from __future__ import annotations

import logging
import sys

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines.emulators import configure_bigquery_emulator
from pipelines.options import bq_project, validated
from pipelines.streaming import build_pipeline
from transforms.triggers import initial_state_from_bigquery

_LOG = logging.getLogger(__name__)


def run(argv: list[str] | None = None) -> None:
    options = PipelineOptions(argv)
    options.view_as(StandardOptions).streaming = True
    try:
        opts, config = validated(options)
    except ValueError as e:
        sys.exit(f"error: {e}")

    from dataset.resources import bigquery_client, ensure_bigquery_tables

    configure_bigquery_emulator(bq_project(options))
    ensure_bigquery_tables(bq_project(options), opts.bq_dataset, config)
    _LOG.info(
        "Starting %s pipeline: %s -> %s.%s",
        config.name,
        opts.input_subscription,
        bq_project(options),
        opts.bq_dataset,
    )
    trigger_state = None
    if opts.retrain_topic:
        trigger_state = initial_state_from_bigquery(
            bigquery_client(bq_project(options)), bq_project(options), opts.bq_dataset, config
        )
        _LOG.info(
            "Retraining triggers resume at sequence %d with %d pending examples",
            trigger_state.sequence,
            trigger_state.pending,
        )
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, options, trigger_state)
    result = pipeline.run()
    result.wait_until_finish()


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    run()
