"""The pipeline's options: one class, mirrored by templates/metadata.json.

Flag names equal the flex template's parameter names, so a template launch
and ``python -m pipelines.main`` take the same arguments.
"""

from __future__ import annotations

import re

from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

from dataset.config import DatasetConfig, load_config

_SUBSCRIPTION_RE = re.compile(r"^projects/[^/]+/subscriptions/[^/]+$")
_TOPIC_RE = re.compile(r"^projects/[^/]+/topics/[^/]+$")
_DATASET_RE = re.compile(r"^[A-Za-z0-9_]{1,1024}$")


class StreamingTrainingOptions(PipelineOptions):
    """Options of the continuous-training streaming pipeline."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--dataset_config",
            default=None,
            help="Path to the dataset config (YAML/JSON), e.g. configs/traffic.yaml.",
        )
        parser.add_argument(
            "--input_subscription",
            default=None,
            help="Pub/Sub subscription to read: projects/<project>/subscriptions/<name>.",
        )
        parser.add_argument(
            "--bq_dataset",
            default=None,
            help="BigQuery dataset that holds the output tables.",
        )
        parser.add_argument(
            "--bq_project",
            default=None,
            help="Project of the BigQuery dataset (default: --project).",
        )
        parser.add_argument(
            "--dedup_window_seconds",
            type=int,
            default=600,
            help="How long (processing time) a message id is remembered to drop "
            "redelivered duplicates.",
        )
        parser.add_argument(
            "--model_registry",
            default=None,
            help="Model registry root (local path or gs://). Empty: no inline predictions.",
        )
        parser.add_argument(
            "--model_poll_seconds",
            type=float,
            default=10.0,
            help="How often inference workers check the registry for a new current version.",
        )
        parser.add_argument(
            "--retrain_topic",
            default=None,
            help="Pub/Sub topic for retraining requests (projects/<p>/topics/<t>). "
            "Empty: no triggers.",
        )
        parser.add_argument(
            "--inference_max_batch_size",
            type=int,
            default=64,
            help="Largest batch RunInference sends to the model.",
        )


def validated(options: PipelineOptions) -> tuple[StreamingTrainingOptions, DatasetConfig]:
    """Checks the options early and loads the dataset config.

    Raises:
        ValueError: with a message naming the flag to fix.
    """
    opts = options.view_as(StreamingTrainingOptions)
    for flag in ("dataset_config", "input_subscription", "bq_dataset"):
        if not getattr(opts, flag):
            raise ValueError(f"--{flag} is required")
    if not _SUBSCRIPTION_RE.match(opts.input_subscription or ""):
        raise ValueError(
            f"--input_subscription={opts.input_subscription!r}: expected "
            "projects/<project>/subscriptions/<name>"
        )
    if not _DATASET_RE.match(opts.bq_dataset or ""):
        raise ValueError(f"--bq_dataset={opts.bq_dataset!r}: use letters, digits and underscores")
    if opts.dedup_window_seconds <= 0:
        raise ValueError("--dedup_window_seconds must be positive")
    if opts.retrain_topic and not _TOPIC_RE.match(opts.retrain_topic):
        raise ValueError(
            f"--retrain_topic={opts.retrain_topic!r}: expected projects/<project>/topics/<name>"
        )
    if opts.model_poll_seconds < 0:
        raise ValueError("--model_poll_seconds must be >= 0")
    if opts.inference_max_batch_size < 1:
        raise ValueError("--inference_max_batch_size must be >= 1")
    if not bq_project(options):
        raise ValueError("set --bq_project or --project")
    return opts, load_config(opts.dataset_config)


def bq_project(options: PipelineOptions) -> str | None:
    opts = options.view_as(StreamingTrainingOptions)
    return opts.bq_project or options.view_as(GoogleCloudOptions).project


def table_spec(options: PipelineOptions, table: str) -> str:
    """``project:dataset.table`` for a table of this pipeline."""
    opts = options.view_as(StreamingTrainingOptions)
    return f"{bq_project(options)}:{opts.bq_dataset}.{table}"
