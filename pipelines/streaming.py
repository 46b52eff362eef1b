"""The streaming pipeline: Pub/Sub events -> validated records -> BigQuery.

    Pub/Sub ─ ReadEvents (publish-time timestamps, dedup by id)
      └ ParseAndValidate (checks the event-time attribute, assigns event time)
                          ┬─ dead letters ─────────────────────────┐
                          └ records (─ AttachHistory if history_features) │
                              ├ FeatureRecords ─ WindowAndAggregate ─ WriteAggregates ─┤
                              │    └ PredictAndRecord (RunInference) ─ WritePredictions ┤
                              │         └─────────┐ inference errors ──────────────────┤
                              └ BuildTrainingExamples ─ WriteTrainingExamples ─────────┤
                                  ├ join errors ────────────────────────────────────────┤
                                  └ MeasureOnlineQuality (+ predictions) ─ WritePredictionQuality
                                                       FlattenDeadLetters ─ WriteDeadLetters

``build_graph`` applies everything after the source and before the sinks,
so tests can feed it a ``TestStream``; ``build_pipeline`` adds Pub/Sub and
BigQuery (``Sinks``). Neither runs the pipeline: ``pipelines.main`` does.
``build_pipeline`` also takes another source and ``Sinks`` (same step names),
so the whole graph can run in process without a network
(``benchmarks.batch_cost``).
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from dataset.config import DatasetConfig
from pipelines.options import table_spec, validated
from transforms.aggregation import WindowAndAggregate
from transforms.history import AttachHistory
from transforms.ingestion import ReadEvents
from transforms.labeling import BuildTrainingExamples
from transforms.quality import JoinPredictionsWithLabels, MeasureOnlineQuality
from transforms.sinks import WriteDeadLetters, WriteRows
from transforms.triggers import DecideRetraining, TriggerState, trigger_message
from transforms.validation import DEAD_LETTER, ParseAndValidate


def build_graph(
    messages,
    config: DatasetConfig,
    inference: dict | None = None,
    triggers: TriggerState | None = None,
) -> dict[str, beam.PCollection]:
    """Applies validation, aggregation, labeling and (optionally) inference.

    Args:
        messages: deduplicated PubsubMessages.
        config: the dataset config.
        inference: ``PredictAndRecord`` keyword arguments (``registry_root``,
            ``poll_seconds``, ``max_batch_size``); None for no predictions.
        triggers: the retraining trigger's starting state (rebuilt from
            BigQuery at launch); None for no retraining triggers.

    Returns:
        ``{"records", "aggregates", "examples", "dead_letter"}`` PCollections,
        plus ``"predictions"`` and ``"quality"`` with inference and
        ``"triggers"`` with triggers;
        ``dead_letter`` holds the rows of every step that rejected a message.
    """
    parsed = messages | "ParseAndValidate" >> ParseAndValidate(config)
    records = parsed.records
    if config.history_features:
        # Before the fan-out: predictions and training rows carry the same values.
        records = records | "AttachHistory" >> AttachHistory(config)
    features = records | "FeatureRecords" >> beam.Filter(lambda r: r["kind"] == "features")
    aggregates = features | "WindowAndAggregate" >> WindowAndAggregate(config)
    examples = records | "BuildTrainingExamples" >> BuildTrainingExamples(config)
    errors = [parsed[DEAD_LETTER], examples[DEAD_LETTER]]
    graph = {"records": records, "aggregates": aggregates, "examples": examples["examples"]}
    if inference is not None:
        # Imported here: TensorFlow loads only for pipelines that predict.
        from transforms.inference import SCORED, PredictAndRecord

        predicted = features | "PredictAndRecord" >> PredictAndRecord(config, **inference)
        errors.append(predicted["dead_letter"])
        graph["predictions"] = predicted["predictions"]
        if config.label.source == "inline":
            scored = predicted[SCORED]
        else:
            scored = (
                predicted["predictions"],
                examples["examples"],
            ) | "JoinPredictionsWithLabels" >> JoinPredictionsWithLabels(config)
        graph["quality"] = scored | "MeasureOnlineQuality" >> MeasureOnlineQuality(
            config, config.evaluation_window_seconds
        )
    if triggers is not None:
        graph["triggers"] = graph["examples"] | "DecideRetraining" >> DecideRetraining(
            config, triggers, quality=graph.get("quality")
        )
    graph["dead_letter"] = errors | "FlattenRecordErrors" >> beam.Flatten()
    return graph


class Sinks:
    """Where the pipeline's outputs go: BigQuery tables and the retraining topic.

    Each method returns the transform applied under the sink's step name.
    A subclass can replace them (e.g. a benchmark's counting no-op).
    """

    def rows(self, table: str) -> beam.PTransform:
        """Writes rows to ``table`` (``project:dataset.table``); outputs dead-letter
        rows for the rows it could not write."""
        return WriteRows(table)

    def dead_letters(self, table: str) -> beam.PTransform:
        """Writes dead-letter rows to ``table`` (the last resort: outputs nothing used)."""
        return WriteDeadLetters(table)

    def messages(self, topic: str) -> beam.PTransform:
        """Publishes PubsubMessages to ``topic``."""
        return beam.io.WriteToPubSub(topic, with_attributes=True)


def uses_dataflow(options: PipelineOptions) -> bool:
    runner = options.view_as(StandardOptions).runner or ""
    return "dataflow" in str(runner).lower()


def build_pipeline(
    p: beam.Pipeline,
    options: PipelineOptions,
    trigger_state: TriggerState | None = None,
    source: beam.PTransform | None = None,
    sinks: Sinks | None = None,
) -> dict[str, beam.PCollection]:
    """Builds the whole streaming pipeline on ``p`` (does not run it).

    Args:
        p: the pipeline.
        options: the pipeline's options (validated here).
        trigger_state: where the retraining trigger resumes (see
            ``transforms.triggers.initial_state_from_bigquery``); used with
            --retrain_topic.
        source: replaces ``ReadFromPubSub`` on --input_subscription (see
            ``transforms.ingestion.ReadEvents``); None reads Pub/Sub.
        sinks: replaces the BigQuery and Pub/Sub writes; None writes them.
    """
    opts, config = validated(options)
    tables = config.tables
    sinks = sinks or Sinks()
    messages = p | "ReadEvents" >> ReadEvents(
        opts.input_subscription,
        config,
        opts.dedup_window_seconds,
        source_dedup=uses_dataflow(options),
        source=source,
    )
    inference = None
    if opts.model_registry:
        inference = {
            "registry_root": opts.model_registry,
            "poll_seconds": opts.model_poll_seconds,
            "max_batch_size": opts.inference_max_batch_size,
        }
    triggers = None
    if opts.retrain_topic:
        triggers = trigger_state or TriggerState()
    graph = build_graph(messages, config, inference, triggers)
    outputs = {
        "aggregates": ("WriteAggregates", tables.aggregates),
        "examples": ("WriteTrainingExamples", tables.training_examples),
        "predictions": ("WritePredictions", tables.predictions),
        "quality": ("WritePredictionQuality", tables.prediction_quality),
        "triggers": ("WriteRetrainTriggers", tables.retrain_triggers),
    }
    if "triggers" in graph:
        _ = (
            graph["triggers"]
            | "TriggerMessages" >> beam.Map(trigger_message)
            | "PublishRetrainTriggers" >> sinks.messages(opts.retrain_topic)
        )
    dead = [graph["dead_letter"]]
    for name, (label, table) in outputs.items():
        if name in graph:
            dead.append(graph[name] | label >> sinks.rows(table_spec(options, table)))
    all_dead = dead | "FlattenDeadLetters" >> beam.Flatten()
    all_dead | "WriteDeadLetters" >> sinks.dead_letters(table_spec(options, tables.dead_letter))
    return graph
