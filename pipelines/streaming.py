"""The streaming pipeline: Pub/Sub events -> validated records -> BigQuery.

    Pub/Sub ─ ReadEvents (event time from attribute, dedup by id)
      └ ParseAndValidate ─┬─ dead letters ─────────────────────────┐
                          └ records                                 │
                              ├ FeatureRecords ─ WindowAndAggregate ─ WriteAggregates ─┤
                              └ BuildTrainingExamples ─ WriteTrainingExamples ─────────┤
                                  └ join errors ────────────────────────────────────────┤
                                                       FlattenDeadLetters ─ WriteDeadLetters

``build_graph`` applies everything after the source and before the sinks,
so tests can feed it a ``TestStream``; ``build_pipeline`` adds Pub/Sub and
BigQuery. Neither runs the pipeline: ``pipelines.main`` does.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines.dataset_config import DatasetConfig
from pipelines.options import table_spec, validated
from transforms.aggregation import WindowAndAggregate
from transforms.ingestion import ReadEvents
from transforms.labeling import BuildTrainingExamples
from transforms.sinks import WriteDeadLetters, WriteRows
from transforms.validation import DEAD_LETTER, ParseAndValidate


def build_graph(messages, config: DatasetConfig) -> dict[str, beam.PCollection]:
    """Applies validation, aggregation and labeling to deduplicated PubsubMessages.

    Returns:
        ``{"records", "aggregates", "examples", "dead_letter"}`` PCollections;
        ``dead_letter`` holds the rows of every step that rejected a message.
    """
    parsed = messages | "ParseAndValidate" >> ParseAndValidate(config)
    records = parsed.records
    aggregates = (
        records
        | "FeatureRecords" >> beam.Filter(lambda r: r["kind"] == "features")
        | "WindowAndAggregate" >> WindowAndAggregate(config)
    )
    examples = records | "BuildTrainingExamples" >> BuildTrainingExamples(config)
    dead_letter = (parsed[DEAD_LETTER], examples[DEAD_LETTER]) | "FlattenRecordErrors" >> (
        beam.Flatten()
    )
    return {
        "records": records,
        "aggregates": aggregates,
        "examples": examples["examples"],
        "dead_letter": dead_letter,
    }


def uses_dataflow(options: PipelineOptions) -> bool:
    runner = options.view_as(StandardOptions).runner or ""
    return "dataflow" in str(runner).lower()


def build_pipeline(p: beam.Pipeline, options: PipelineOptions) -> dict[str, beam.PCollection]:
    """Builds the whole streaming pipeline on ``p`` (does not run it)."""
    opts, config = validated(options)
    tables = config.tables
    messages = p | "ReadEvents" >> ReadEvents(
        opts.input_subscription,
        config,
        opts.dedup_window_seconds,
        source_dedup=uses_dataflow(options),
    )
    graph = build_graph(messages, config)
    failed_aggregates = graph["aggregates"] | "WriteAggregates" >> WriteRows(
        table_spec(options, tables.aggregates)
    )
    failed_examples = graph["examples"] | "WriteTrainingExamples" >> WriteRows(
        table_spec(options, tables.training_examples)
    )
    all_dead = (
        graph["dead_letter"],
        failed_aggregates,
        failed_examples,
    ) | "FlattenDeadLetters" >> beam.Flatten()
    all_dead | "WriteDeadLetters" >> WriteDeadLetters(table_spec(options, tables.dead_letter))
    return graph
