"""Static (batch) serving: ``python -m pipelines.main batch-predict``.

::

    python -m pipelines.main batch-predict --config configs/traffic.yaml \\
        --input PROJECT.DATASET.TABLE | DATASET.TABLE | TABLE | FILE.jsonl | FILE.csv \\
        --output TABLE --registry ROOT [--model-version V] \\
        --project P --bq_dataset D [--temp_dataset D] [--dead_letter_table T] \\
        [Beam options, e.g. --runner DataflowRunner --region R --temp_location gs://...]

A bounded Beam pipeline::

    ReadInstances (BigQuery DIRECT_READ, or JSON Lines / CSV text)
      └ ValidateInstances (transforms.validation.validate_payload) ─┬─ dead letters
            (└ AttachHistoryInOrder, with history_features)          │
            └ PredictWithVersion (RunInference, one pinned version) ─┤─ dead letters
                  └ WritePredictions (prediction schema)             └ WriteDeadLetters

* Instances are rows whose columns include the config's event fields (key,
  event time, features; the join key for separately labelled data). Other
  columns are ignored, so the training-examples table is a valid input.
  Each prediction keeps the instance's keys: ``example_id`` (the row's
  ``example_id`` or id-attribute column, else its join key, else a hash of
  its event fields), the config's key column and ``event_time``, plus
  ``prediction``, ``predicted_label``, ``model_version`` and ``predicted_at``
  (``dataset.tables.prediction_schema``: the table the online service reads
  in hybrid mode).
* The model is ``--model-version`` or the registry's current version,
  resolved once when the pipeline is built: the whole job scores with one
  version, even if ``CURRENT`` moves meanwhile. It is loaded by
  ``model.handler.HotSwapModel`` with ``load_predict_fn``, as in the
  streaming pipeline.
* Invalid instances (and inference failures) go to the dead-letter table.
* With ``history_features``, each instance's history values come from the
  PREVIOUS instances of its key in the input, in event-time order
  (``transforms.history.AttachHistoryInOrder``: ``model.history``, the
  streaming step's function). Label aggregates read an instance's label
  column when the config's labels are inline and the row has one (e.g. the
  training-examples table as input), only for the instances after it; a
  stored history column of the input is ignored.
* BigQuery input is read with ``DIRECT_READ`` and an explicit
  ``temp_dataset`` (default: the output dataset), never the default: without
  it Beam's cleanup deletes datasets by label (and, on the emulator, which
  ignores the label filter, every dataset of the project).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import io
import json
import logging
import re
import traceback
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions
from apache_beam.pvalue import TaggedOutput

from dataset.config import DatasetConfig
from dataset.times import format_event_time, to_datetime
from model.handler import HotSwapModel, RegistryModelHandler, load_predict_fn
from transforms.history import AttachHistoryInOrder
from transforms.inference import PredictAndRecord
from transforms.validation import (
    DEAD_LETTER,
    RecordError,
    check_label,
    dead_letter_row,
    validate_payload,
)

_LOG = logging.getLogger(__name__)
NAMESPACE = "batch_predict"
STEP = "ValidateInstances"
_PROJECT_RE = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$|^[A-Za-z0-9_-]+$")
_DATASET_RE = re.compile(r"^[A-Za-z0-9_]{1,1024}$")
_TABLE_RE = re.compile(r"^[A-Za-z0-9_$-]{1,1024}$")
FILE_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv"}


def build_parser() -> argparse.ArgumentParser:
    """The command's own flags; everything else is a Beam pipeline option.

    A plain parser, not a ``PipelineOptions`` subclass: Beam merges every
    subclass into one parser, where these flags would clash with the streaming
    pipeline's (``--bq_dataset``, ``--dataset_config``).
    """
    p = argparse.ArgumentParser(
        prog="python -m pipelines.main batch-predict",
        description="Batch predictions with a registry version, written to BigQuery.",
        epilog="Other flags are Beam pipeline options (--runner, --project, --region, ...).",
    )
    p.add_argument("--config", "--dataset_config", dest="config", required=True)
    p.add_argument(
        "--input",
        required=True,
        help="[PROJECT.]DATASET.TABLE, a TABLE of --bq_dataset, or a .jsonl/.csv file",
    )
    p.add_argument("--output", required=True, help="output table ([PROJECT.]DATASET.)TABLE")
    p.add_argument("--registry", "--model_registry", dest="registry", required=True)
    p.add_argument(
        "--model-version",
        "--model_version",
        dest="model_version",
        help="the version to score with (default: the registry's current one)",
    )
    p.add_argument("--bq_dataset", "--bq-dataset", dest="bq_dataset")
    p.add_argument("--bq_project", help="project of the tables (default: --project)")
    p.add_argument(
        "--temp_dataset", help="dataset Beam may use on a BigQuery read (default: output's)"
    )
    p.add_argument("--dead_letter_table", help="default: the config's dead-letter table")
    p.add_argument("--inference_max_batch_size", type=int, default=64)
    return p


# ------------------------------------------------------------------ pure logic


def table_ref(value: str, project: str | None, dataset: str | None) -> tuple[str, str, str]:
    """``[PROJECT.|PROJECT:]DATASET.TABLE`` or ``TABLE`` -> ``(project, dataset, table)``.

    Raises:
        ValueError: if it is not a table name, or a part it lacks has no default.
    """
    p, sep, rest = value.rpartition(":")
    parts = rest.split(".")
    if sep:
        parts = [p, *parts] if len(parts) == 2 else []
    parts = [None] * (3 - len(parts)) + parts if 1 <= len(parts) <= 3 else []
    if not parts or not all(
        part is None or pattern.match(part)
        for part, pattern in zip(parts, (_PROJECT_RE, _DATASET_RE, _TABLE_RE), strict=True)
    ):
        raise ValueError(f"{value!r} is not a BigQuery table ([PROJECT.]DATASET.TABLE)")
    p, d, t = parts
    p, d = p or project, d or dataset
    if not p or not d:
        raise ValueError(f"table {value!r}: set --project and --bq_dataset, or name them in it")
    return p, d, t


def input_kind(value: str) -> str:
    """``jsonl``, ``csv`` (by file suffix, or a path/URI) or ``bigquery``."""
    lower = value.lower()
    for suffix, kind in FILE_SUFFIXES.items():
        if lower.endswith(suffix):
            return kind
    if "/" in value:
        raise ValueError(f"--input {value!r}: a file must end in .jsonl, .json, .ndjson or .csv")
    return "bigquery"


def event_fields(config: DatasetConfig) -> list[str]:
    """The columns an instance contributes: key, event time, features, join key, extras."""
    fields = [config.key_field, config.event_time_field, *config.feature_names]
    if config.label.join_key:
        fields.append(config.label.join_key)
    fields.extend(f for f in config.extra_fields if f not in fields)
    return fields


def to_payload(row: dict[str, Any], config: DatasetConfig) -> dict[str, Any]:
    """The event payload of an input row: its event columns, event time in the
    config's format (a BigQuery TIMESTAMP arrives as a datetime)."""
    payload = {field: row[field] for field in event_fields(config) if field in row}
    when = payload.get(config.event_time_field)
    if isinstance(when, dt.datetime):
        payload[config.event_time_field] = format_event_time(
            to_datetime(when).timestamp(), config.event_time_format
        )
    return payload


def reads_labels(config: DatasetConfig) -> bool:
    """Whether an instance's own label column matters: a label history feature
    of an inline-labelled config (the label of earlier instances of its key)."""
    return config.label.source == "inline" and any(
        spec.uses_label for spec in config.history_features
    )


def inline_label(row: dict[str, Any], config: DatasetConfig) -> Any:
    """A row's label for the history of the instances after it (None: none).

    Raises:
        RecordError: for a label the config does not accept.
    """
    value = row.get(config.label.field)
    if value is None or value == "" or not reads_labels(config):
        return None
    if isinstance(value, str) and config.label.type in ("int", "float", "bool"):
        value = _typed(config.label.type, value)  # a CSV cell
    return check_label(config, value)


def instance_id(row: dict[str, Any], payload: dict[str, Any], config: DatasetConfig) -> str:
    """A stable id for an instance: its ``example_id``/id column, join key, or a hash."""
    for field in ("example_id", config.id_attribute, config.label.join_key):
        if field and row.get(field) not in (None, ""):
            return str(row[field])
    canonical = json.dumps(payload, sort_keys=True, default=str)
    return "sha1-" + hashlib.sha1(canonical.encode("utf-8")).hexdigest()[:20]


def _typed(spec_type: str, text: str) -> Any:
    """A CSV cell as the type a feature expects (left as text if it does not parse)."""
    try:
        if spec_type == "int":
            return int(text)
        if spec_type == "float":
            return float(text)
        if spec_type == "bool":
            lowered = text.strip().lower()
            if lowered in ("true", "1"):
                return True
            if lowered in ("false", "0"):
                return False
    except ValueError:
        pass
    return text


def csv_row(line: str, header: Sequence[str], config: DatasetConfig) -> dict[str, Any]:
    """One CSV line as a row; feature (and numeric event-time) cells typed by the config.

    Raises:
        RecordError: for a line with another number of cells than the header.
    """
    (cells,) = list(csv.reader(io.StringIO(line)))
    if len(cells) != len(header):
        raise RecordError(f"CSV line has {len(cells)} cells, the header {len(header)}")
    types: dict[str, str] = {spec.name: spec.type for spec in config.features}
    if config.event_time_format != "iso8601":
        types[config.event_time_field] = "float"
    row: dict[str, Any] = {}
    for name, cell in zip(header, cells, strict=True):
        if cell == "":
            continue  # an empty cell is a missing value
        row[name] = _typed(types[name], cell) if name in types else cell
    return row


# ----------------------------------------------------------------- transforms


class _ValidateInstanceFn(beam.DoFn):
    """An input row (dict) or text line -> a validated record, or a dead-letter row."""

    def __init__(self, config: DatasetConfig, kind: str, header: Sequence[str] | None):
        self._config = config
        self._kind = kind
        self._header = list(header or ())
        self._valid = Metrics.counter(NAMESPACE, "instances_valid")
        self._invalid = Metrics.counter(NAMESPACE, "instances_dead_lettered")

    def _row(self, element: Any) -> dict[str, Any]:
        if self._kind == "csv":
            return csv_row(element, self._header, self._config)
        if self._kind == "jsonl":
            try:
                row = json.loads(element)
            except json.JSONDecodeError as e:
                raise RecordError(f"line is not valid JSON: {e}") from e
            if not isinstance(row, dict):
                raise RecordError(f"expected a JSON object, got {type(row).__name__}")
            return row
        return dict(element)

    def process(self, element):
        raw = element if isinstance(element, str) else json.dumps(element, default=str)
        try:
            row = self._row(element)
            payload = to_payload(row, self._config)
            example_id = instance_id(row, payload, self._config)
            record = validate_payload(payload, self._config, example_id)
            if record["kind"] != "features":
                raise RecordError("a label message is not an instance to predict")
            record["label"] = inline_label(row, self._config)
        except RecordError as e:
            self._invalid.inc()
            yield TaggedOutput(
                DEAD_LETTER,
                dead_letter_row(raw, {"source": self._kind}, str(e), STEP, traceback.format_exc(2)),
            )
            return
        self._valid.inc()
        record["join_id"] = None  # the example id is the message id (see instance_id)
        yield record


class PinnedVersionHandler(RegistryModelHandler):
    """``RegistryModelHandler`` held to one version (a batch job scores with one model).

    Raises (in ``load_model``):
        RuntimeError: if the version cannot be loaded: a batch job fails rather
            than skipping every instance.
    """

    def __init__(self, registry_root: str, version: str, **batching: Any):
        super().__init__(registry_root, poll_seconds=float("inf"), **batching)
        self._version = version

    def load_model(self) -> HotSwapModel:
        from model.registry import ModelRegistry

        registry = ModelRegistry(self._registry_root)
        version = self._version
        model = HotSwapModel(lambda: version, lambda v: load_predict_fn(registry, v), float("inf"))
        loaded, _ = model.acquire()
        if loaded != version:
            raise RuntimeError(f"model version {version} could not be loaded from {registry.root}")
        return model


class PredictWithVersion(PredictAndRecord):
    """``PredictAndRecord`` (keys, rows, dead letters) with a pinned version."""

    def __init__(self, config: DatasetConfig, registry_root: str, version: str, batch: int):
        super().__init__(config, registry_root, max_batch_size=batch)
        self._version = version

    def base_handler(self) -> PinnedVersionHandler:
        return PinnedVersionHandler(
            self._registry_root,
            self._version,
            min_batch_size=1,
            max_batch_size=self._max_batch_size,
        )


def build_graph(
    instances,
    config: DatasetConfig,
    registry_root: str,
    version: str,
    kind: str,
    header: Sequence[str] | None = None,
    max_batch_size: int = 64,
) -> dict[str, beam.PCollection]:
    """Validation and prediction of raw instances (rows or lines of ``kind``).

    Returns:
        ``{"predictions", "dead_letter"}``.
    """
    validated = instances | "ValidateInstances" >> beam.ParDo(
        _ValidateInstanceFn(config, kind, header)
    ).with_outputs(DEAD_LETTER, main="records")
    records = validated.records
    if config.history_features:
        records = records | "AttachHistoryInOrder" >> AttachHistoryInOrder(config)
    predicted = records | "PredictWithVersion" >> PredictWithVersion(
        config, registry_root, version, max_batch_size
    )
    dead = (validated[DEAD_LETTER], predicted["dead_letter"]) | "FlattenDeadLetters" >> (
        beam.Flatten()
    )
    return {"predictions": predicted["predictions"], "dead_letter": dead}


# ------------------------------------------------------------ pipeline and run


class Plan:
    """What a batch-prediction run does, resolved and checked before building.

    Attributes:
        config: the dataset config.
        kind: ``bigquery``, ``jsonl`` or ``csv``.
        source: the input table (``project:dataset.table``) or file pattern.
        output, dead_letter: ``project:dataset.table`` of the two sinks.
        temp_dataset: ``(project, dataset)`` Beam may use for a BigQuery read.
        registry_root, version: the model.
        header: a CSV file's column names.
    """

    def __init__(self, args: argparse.Namespace, options: PipelineOptions):
        from dataset.config import load_config
        from model.registry import ModelRegistry

        opts = args
        if opts.inference_max_batch_size < 1:
            raise ValueError("--inference_max_batch_size must be >= 1")
        self.config = load_config(opts.config)
        project = opts.bq_project or options.view_as(GoogleCloudOptions).project
        self.kind = input_kind(opts.input)
        out_p, out_d, out_t = table_ref(opts.output, project, opts.bq_dataset)
        self.output = f"{out_p}:{out_d}.{out_t}"
        self.project, self.dataset = out_p, out_d
        dl_p, dl_d, dl_t = table_ref(
            opts.dead_letter_table or self.config.tables.dead_letter, out_p, out_d
        )
        self.dead_letter = f"{dl_p}:{dl_d}.{dl_t}"
        self.temp_dataset = (out_p, opts.temp_dataset or out_d)
        self.header: list[str] | None = None
        if self.kind == "bigquery":
            in_p, in_d, in_t = table_ref(opts.input, project, opts.bq_dataset)
            self.source = f"{in_p}:{in_d}.{in_t}"
        else:
            self.source = opts.input
            if self.kind == "csv":
                self.header = read_csv_header(opts.input)
        registry = ModelRegistry(opts.registry)
        self.registry_root = registry.root
        version = opts.model_version or registry.current_version()
        if version is None:
            raise ValueError(
                f"registry {registry.root} has no current version; pass --model-version"
            )
        registry.get(version)  # ValueError naming the known versions
        self.version = version
        self.max_batch_size = opts.inference_max_batch_size


def read_csv_header(pattern: str) -> list[str]:
    """The column names on the first line of the first file matching ``pattern``.

    Raises:
        ValueError: if no file matches or the first line is empty.
    """
    from apache_beam.io.filesystems import FileSystems

    matches = [m.path for result in FileSystems.match([pattern]) for m in result.metadata_list]
    if not matches:
        raise ValueError(f"--input {pattern!r}: no such file")
    with FileSystems.open(sorted(matches)[0]) as f:
        first = f.readline().decode("utf-8").strip()
    header = next(csv.reader([first]), [])
    if not first or not all(header):
        raise ValueError(f"--input {pattern!r}: the first line must name the columns")
    return header


def build_pipeline(pipeline: beam.Pipeline, plan: Plan) -> dict[str, beam.PCollection]:
    """Adds reading, ``build_graph`` and the BigQuery sinks to ``pipeline``."""
    from apache_beam.io.gcp.bigquery import ReadFromBigQuery
    from apache_beam.io.gcp.internal.clients.bigquery import DatasetReference

    from transforms.sinks import WriteDeadLetters, WriteRows

    if plan.kind == "bigquery":
        temp_project, temp_dataset = plan.temp_dataset
        instances = pipeline | "ReadInstances" >> ReadFromBigQuery(
            table=plan.source,
            method=ReadFromBigQuery.Method.DIRECT_READ,
            # Never without: Beam's cleanup would delete datasets by label.
            temp_dataset=DatasetReference(projectId=temp_project, datasetId=temp_dataset),
        )
    else:
        instances = pipeline | "ReadInstances" >> beam.io.ReadFromText(
            plan.source, skip_header_lines=1 if plan.kind == "csv" else 0
        )
        instances = instances | "SkipBlankLines" >> beam.Filter(lambda line: line.strip() != "")
    out = build_graph(
        instances,
        plan.config,
        plan.registry_root,
        plan.version,
        plan.kind,
        plan.header,
        plan.max_batch_size,
    )
    refused = out["predictions"] | "WritePredictions" >> WriteRows(plan.output)
    dead = (out["dead_letter"], refused) | "AllDeadLetters" >> beam.Flatten()
    dead | "WriteDeadLetters" >> WriteDeadLetters(plan.dead_letter)
    return out


def _ensure_tables(plan: Plan) -> None:
    from dataset.resources import (
        bigquery_client,
        ensure_bigquery_dataset,
        table_definition,
    )
    from dataset.tables import DEAD_LETTER_SCHEMA, prediction_schema, table_layouts

    layout = table_layouts(plan.config)
    config_tables = plan.config.tables
    client = bigquery_client(plan.project)
    try:
        for spec, fields, table_layout in (
            (plan.output, prediction_schema(plan.config), layout[config_tables.predictions]),
            (plan.dead_letter, DEAD_LETTER_SCHEMA, layout[config_tables.dead_letter]),
        ):
            project, rest = spec.split(":", 1)
            dataset = rest.split(".", 1)[0]
            ensure_bigquery_dataset(client, project, dataset)
            client.create_table(
                table_definition(spec.replace(":", "."), fields, table_layout), exists_ok=True
            )
    finally:
        client.close()


def _counter(result, name: str) -> int:
    from apache_beam.metrics.metric import MetricsFilter

    found = result.metrics().query(MetricsFilter().with_name(name))["counters"]
    return int(sum(c.committed or 0 for c in found))


def main(argv: Sequence[str]) -> int:
    """``batch-predict``: builds and runs the pipeline; prints a JSON summary.

    Returns 0 when the job finished, 2 for unusable arguments.
    """
    parser = build_parser()
    try:
        args, beam_args = parser.parse_known_args(list(argv))
    except SystemExit as e:  # --help (0) or a usage error (2)
        return int(e.code or 0)
    options = PipelineOptions(beam_args)
    try:
        plan = Plan(args, options)
    except ValueError as e:
        print(f"error: {e}", flush=True)
        return 2
    from pipelines.emulators import configure_bigquery_emulator, configure_bigquery_storage_emulator

    configure_bigquery_emulator(plan.project)
    configure_bigquery_storage_emulator()
    _ensure_tables(plan)
    _LOG.info("Batch predictions of %s with %s -> %s", plan.source, plan.version, plan.output)
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, plan)
    result = pipeline.run()
    result.wait_until_finish()
    summary = {
        "input": plan.source,
        "output": plan.output,
        "dead_letter_table": plan.dead_letter,
        "model_version": plan.version,
        "predictions": _counter(result, "predictions"),
        "dead_lettered": _counter(result, "instances_dead_lettered"),
        "state": str(result.state),
    }
    print(json.dumps(summary), flush=True)
    return 0
