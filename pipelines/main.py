"""Entry point: ``python -m pipelines.main [options]``.

``python -m pipelines.main backtest ...`` runs the policy backtest instead
(``pipelines.backtest``).

Used by ``run_local.sh`` (DirectRunner against the emulators) and by the
flex template (DataflowRunner). It validates the options, makes sure the
output tables exist, builds the pipeline and runs it: on an in-process runner
until cancelled; on Dataflow it submits the job and returns.

``--dry_run=True`` (with ``--runner DataflowRunner --no_auth``) creates no
resources and contacts nothing: it builds the real streaming pipeline, lets
the DataflowRunner translate it into a job without submitting it, and prints
the job's step names as one JSON line (``job_summary``). The checked-in
``templates/step_names.json`` is that list; a step rename breaks ``--update``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions, TestOptions

from pipelines.options import StreamingTrainingOptions, bq_project, validated
from pipelines.streaming import build_pipeline, uses_dataflow

_LOG = logging.getLogger(__name__)
_TRUE = ("1", "true", "yes", "on")


def is_dry_run(options: PipelineOptions) -> bool:
    """Beam's ``--dry_run`` as a bool (Beam keeps the raw string, so "False" would be true)."""
    value = options.view_as(TestOptions).dry_run
    return str(value).strip().lower() in _TRUE if isinstance(value, str) else bool(value)


def job_summary(job: Any) -> dict[str, Any]:
    """What a Dataflow job built by ``--dry_run`` contains, for checks and ``--update``.

    With Runner v2 the steps live in the portable pipeline proto
    (``job.proto_pipeline``), not in ``job.proto.steps``: ``steps`` lists every
    transform's unique name (the names ``--update`` matches), sorted.
    """
    transforms = job.proto_pipeline.components.transforms
    return {
        "streaming": job.proto.type.name == "JOB_TYPE_STREAMING",
        # The runner's synthetic root wrapper is named after its own id: not a step.
        "steps": sorted(t.unique_name for tid, t in transforms.items() if t.unique_name != tid),
    }


def dry_run_job(options: PipelineOptions) -> Any:
    """Builds the streaming pipeline and translates it into a Dataflow job, offline.

    Nothing is created, staged or submitted: the DataflowRunner's ``dry_run``
    returns the ``apiclient.Job`` it would have sent. The retraining trigger
    starts from an empty state (at launch it resumes from BigQuery).

    Raises:
        ValueError: for invalid options, or a runner other than DataflowRunner.
    """
    if not uses_dataflow(options):
        raise ValueError("--dry_run needs --runner DataflowRunner")
    options.view_as(StandardOptions).streaming = True
    options.view_as(TestOptions).dry_run = True
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, options)
    return pipeline.run().job


def help_parser() -> argparse.ArgumentParser:
    """The ``--help`` of this entry point: the pipeline's own options (the template's
    parameters, ``templates/metadata.json``)."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.main",
        description="The streaming continuous-training pipeline (also the flex template's "
        "entry point).",
        epilog="Beam's pipeline options are accepted too, e.g. --runner, --project, --region, "
        "--temp_location, --streaming, --sdk_container_image, --dry_run=True (with "
        "--runner DataflowRunner --no_auth: build the Dataflow job offline and print its "
        "step names as one JSON line).",
    )
    StreamingTrainingOptions._add_argparse_args(parser)
    return parser


def run(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "batch-predict":  # static serving: a batch pipeline of its own
        from pipelines import batch_predict

        sys.exit(batch_predict.main(args[1:]))
    if args and args[0] == "backtest":  # a subcommand, not the streaming pipeline
        from pipelines import backtest

        sys.exit(backtest.main(args[1:]))
    if "-h" in args or "--help" in args:
        help_parser().print_help()
        return
    options = PipelineOptions(argv)
    options.view_as(StandardOptions).streaming = True
    try:
        opts, config = validated(options)
        if is_dry_run(options):
            _LOG.info("Translating the %s pipeline into a Dataflow job (dry run)", config.name)
            print(json.dumps(job_summary(dry_run_job(options)), separators=(",", ":")))
            return
    except ValueError as e:
        sys.exit(f"error: {e}")
    options.view_as(TestOptions).dry_run = False

    # Imported here: a dry run needs no BigQuery client at all.
    from dataset.resources import bigquery_client, ensure_bigquery_tables
    from pipelines.emulators import configure_bigquery_emulator
    from transforms.triggers import initial_state_from_bigquery

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
    if uses_dataflow(options):
        # The flex-template launcher only submits; the streaming job runs on.
        _LOG.info("Submitted Dataflow job %s", result.job_id())
        return
    result.wait_until_finish()


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    run()
