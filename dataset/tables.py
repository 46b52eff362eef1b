"""BigQuery table schemas and layouts, derived from the dataset config.

Schemas are plain lists of ``{"name", "type", "mode"}`` dicts, the form both
``WriteToBigQuery(schema={"fields": ...})`` and ``google-cloud-bigquery``
(via ``SchemaField.from_api_repr``) accept, so one definition serves the
pipeline and the table-creation step.

Layouts (``table_layouts``): every table is partitioned by DAY on its own
time column and, where it has the config's key column, clustered by it.
Queries that filter on the partition column read only the days they need.
"""

from __future__ import annotations

import dataclasses

from dataset.config import DatasetConfig, FeatureSpec

Field = dict[str, object]

_BQ_TYPES = {"int": "INT64", "float": "FLOAT64", "string": "STRING", "bool": "BOOL"}

# The shape of the error table of Google's Pub/Sub-to-BigQuery template,
# plus the pipeline step that rejected the message and its message id.
DEAD_LETTER_SCHEMA: list[Field] = [
    {"name": "timestamp", "type": "TIMESTAMP", "mode": "REQUIRED"},
    {"name": "payloadString", "type": "STRING", "mode": "NULLABLE"},
    {"name": "payloadBytes", "type": "BYTES", "mode": "NULLABLE"},
    {
        "name": "attributes",
        "type": "RECORD",
        "mode": "REPEATED",
        "fields": [
            {"name": "key", "type": "STRING", "mode": "NULLABLE"},
            {"name": "value", "type": "STRING", "mode": "NULLABLE"},
        ],
    },
    {"name": "errorMessage", "type": "STRING", "mode": "NULLABLE"},
    {"name": "stacktrace", "type": "STRING", "mode": "NULLABLE"},
    {"name": "step", "type": "STRING", "mode": "NULLABLE"},
    {"name": "messageId", "type": "STRING", "mode": "NULLABLE"},
]

AGGREGATE_STATS = ("mean", "min", "max", "std")


def _col(name: str, bq_type: str, mode: str = "NULLABLE") -> Field:
    return {"name": name, "type": bq_type, "mode": mode}


def feature_column(spec: FeatureSpec) -> Field:
    return _col(spec.name, _BQ_TYPES[spec.type])


def label_bq_type(config: DatasetConfig) -> str:
    return _BQ_TYPES[config.label.type]


def aggregate_schema(config: DatasetConfig) -> list[Field]:
    """One row per key, window and pane: counts and numeric feature stats."""
    fields = [
        _col(config.key_field, "STRING", "REQUIRED"),
        _col("window_name", "STRING", "REQUIRED"),
        _col("window_start", "TIMESTAMP", "REQUIRED"),
        _col("window_end", "TIMESTAMP", "REQUIRED"),
        _col("pane_timing", "STRING", "REQUIRED"),
        _col("pane_index", "INT64", "REQUIRED"),
        _col("is_last_pane", "BOOL"),
        _col("event_count", "INT64", "REQUIRED"),
    ]
    for spec in config.numeric_features:
        fields.extend(_col(f"{spec.name}_{stat}", "FLOAT64") for stat in AGGREGATE_STATS)
    if config.label.source == "inline":
        fields.append(_col("label_mean", "FLOAT64"))
        fields.append(_col("labeled_count", "INT64"))
    fields.append(_col("computed_at", "TIMESTAMP", "REQUIRED"))
    return fields


def training_schema(config: DatasetConfig) -> list[Field]:
    """One row per labeled example: features, label and lineage."""
    return [
        _col("example_id", "STRING", "REQUIRED"),
        _col(config.key_field, "STRING", "REQUIRED"),
        _col("event_time", "TIMESTAMP", "REQUIRED"),
        *(feature_column(spec) for spec in config.features),
        # History features (dataset.history_spec): the values serving used; NULL: no history.
        *(_col(spec.name, "FLOAT64") for spec in config.history_features),
        _col(config.label.field, label_bq_type(config), "REQUIRED"),
        _col("label_time", "TIMESTAMP"),
        _col("label_source", "STRING", "REQUIRED"),
        _col("ingestion_id", "STRING", "REQUIRED"),
        _col("ingested_at", "TIMESTAMP", "REQUIRED"),
    ]


def prediction_schema(config: DatasetConfig) -> list[Field]:
    """One row per prediction: the example's key passes through (static serving)."""
    return [
        _col("example_id", "STRING", "REQUIRED"),
        _col(config.key_field, "STRING", "REQUIRED"),
        _col("event_time", "TIMESTAMP", "REQUIRED"),
        _col("prediction", "FLOAT64", "REQUIRED"),
        _col("predicted_label", "INT64"),
        _col("model_version", "STRING", "REQUIRED"),
        _col("inference_latency_ms", "FLOAT64"),
        _col("predicted_at", "TIMESTAMP", "REQUIRED"),
    ]


QUALITY_SCHEMA: list[Field] = [
    _col("window_start", "TIMESTAMP", "REQUIRED"),
    _col("window_end", "TIMESTAMP", "REQUIRED"),
    _col("model_version", "STRING", "REQUIRED"),
    _col("examples", "INT64", "REQUIRED"),
    _col("accuracy", "FLOAT64"),
    _col("log_loss", "FLOAT64"),
    _col("brier", "FLOAT64"),
    _col("mean_prediction", "FLOAT64"),
    _col("base_rate", "FLOAT64"),
    _col("mae", "FLOAT64"),
    _col("rmse", "FLOAT64"),
    _col("pane_timing", "STRING"),
    _col("pane_index", "INT64"),
    _col("computed_at", "TIMESTAMP", "REQUIRED"),
]


# One row per retraining request the streaming pipeline publishes.
TRIGGER_SCHEMA: list[Field] = [
    _col("trigger_id", "STRING", "REQUIRED"),
    _col("dataset", "STRING", "REQUIRED"),
    _col("reason", "STRING", "REQUIRED"),
    _col("sequence", "INT64", "REQUIRED"),
    _col("new_examples", "INT64"),
    _col("total_examples", "INT64"),
    _col("event_time_start", "TIMESTAMP"),
    _col("event_time_end", "TIMESTAMP"),
    _col("details", "STRING"),
    _col("created_at", "TIMESTAMP", "REQUIRED"),
]

# Append-only: one row per status change of a training run (queued, running,
# succeeded, rejected, failed); the latest row per run_id is its state.
TRAINING_RUNS_SCHEMA: list[Field] = [
    _col("run_id", "STRING", "REQUIRED"),
    _col("trigger_id", "STRING", "REQUIRED"),
    _col("dataset", "STRING"),
    _col("backend", "STRING"),
    _col("status", "STRING", "REQUIRED"),
    _col("seq", "INT64"),  # per-run order of the status rows (trainer.runs)
    _col("reason", "STRING"),
    _col("recorded_at", "TIMESTAMP", "REQUIRED"),
    _col("started_at", "TIMESTAMP"),
    _col("finished_at", "TIMESTAMP"),
    _col("data_start", "TIMESTAMP"),
    _col("data_end", "TIMESTAMP"),
    _col("rows_train", "INT64"),
    _col("rows_validation", "INT64"),
    _col("metrics", "STRING"),
    _col("gate_decisions", "STRING"),
    _col("model_version", "STRING"),
    _col("promoted", "BOOL"),
    _col("error", "STRING"),
]

# Data a training run refused to train on, and why.
QUARANTINE_SCHEMA: list[Field] = [
    _col("run_id", "STRING", "REQUIRED"),
    _col("check", "STRING", "REQUIRED"),
    _col("feature", "STRING"),
    _col("detail", "STRING"),
    _col("example_ids", "STRING"),
    _col("data_start", "TIMESTAMP"),
    _col("data_end", "TIMESTAMP"),
    _col("rows", "INT64"),
    _col("quarantined_at", "TIMESTAMP", "REQUIRED"),
]


def table_schemas(config: DatasetConfig) -> dict[str, list[Field]]:
    """Every table the streaming pipeline writes, by table name."""
    t = config.tables
    return {
        t.aggregates: aggregate_schema(config),
        t.training_examples: training_schema(config),
        t.dead_letter: DEAD_LETTER_SCHEMA,
        t.predictions: prediction_schema(config),
        t.prediction_quality: QUALITY_SCHEMA,
        t.retrain_triggers: TRIGGER_SCHEMA,
        t.training_runs: TRAINING_RUNS_SCHEMA,
        t.data_quarantine: QUARANTINE_SCHEMA,
    }


@dataclasses.dataclass(frozen=True)
class TableLayout:
    """How a table is laid out: DAY partitions on a TIMESTAMP column, clustering columns."""

    partition_field: str
    cluster_fields: tuple[str, ...] = ()
    partition_type: str = "DAY"


def table_layouts(config: DatasetConfig) -> dict[str, TableLayout]:
    """Partitioning and clustering of every table of ``table_schemas``, by table name.

    The partition column is the time a reader filters on: event time for
    examples and predictions, window start for windowed rows, the time a row
    was written for the launcher's and trainer's bookkeeping tables.
    """
    t, key = config.tables, (config.key_field,)
    return {
        t.aggregates: TableLayout("window_start", key),
        t.training_examples: TableLayout("event_time", key),
        t.dead_letter: TableLayout("timestamp"),
        t.predictions: TableLayout("event_time", key),
        t.prediction_quality: TableLayout("window_start"),
        t.retrain_triggers: TableLayout("created_at"),
        t.training_runs: TableLayout("recorded_at"),
        t.data_quarantine: TableLayout("quarantined_at"),
    }
