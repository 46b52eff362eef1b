"""The training job: read the window, validate, train, evaluate, gate, publish, promote.

Runs as a local process (the launcher's ``local`` backend) and as the Python
module of a Vertex AI CustomJob (``--backend vertex``; then ``--config`` and
``--registry`` are ``gs://`` paths)::

    python -m trainer.task --config configs/traffic.yaml --project P --bq_dataset D \\
        --registry PATH --run-id RID --trigger-id TID [--backend local] [--rows N] \\
        [--attempt-id ID] \\
        [--epochs 8] [--seed 0] [--min-rows 200] [--start T] [--end T] \\
        [--training-file FILE.jsonl] [--metadata JSON] \\
        [--block-on-drift] [--drift-block-threshold 0.75|none] [--infra-time-limit 30]

Steps (each prints a ``[trainer] ...`` progress line):

1. claim the run (``trainer.claims``: an exclusive claim file in the registry).
   If another trainer owns it: print ``refused``, record nothing, exit 75
   (``claims.REFUSED_EXIT_CODE``). Then record ``running`` in ``training_runs``;
2. read the training window (``trainer.data.read_training_window``: the newest
   ``--rows`` rows, default ``retraining.training_window_rows``, deduplicated);
   with ``--training-file`` the same window comes from a JSON Lines file of
   training-table rows instead (``trainer.data.read_training_file``; how
   ``trainer.bootstrap`` trains the first model from history);
3. validate it (``trainer.validation.validate``) against the config's schema and
   the current model version's ``statistics`` metadata. On errors: one
   ``data_quarantine`` row per blocking anomaly (``example_ids`` as a JSON list
   string, the data range), status ``rejected`` with reason
   ``data validation: ...``, exit 0: a refused run is not a crash;
4. split by event time (newest ``validation_fraction`` held out);
5. encode with ``model.features`` and train ``model.keras_model`` (warm start
   from the current model's weights if ``retraining.warm_start``; early
   stopping on the last 10% of the *training* period);
6. evaluate the candidate and the current model on the same held-out rows
   (``trainer.metrics.evaluate``);
7. publish the candidate (status ``candidate``) with metadata ``training_data``,
   ``validation_data``, ``metrics``, ``current_metrics``, ``statistics``,
   ``data_validation``, ``run_id``, ``trigger_id``, ``parent_version``;
8. gates (``trainer.gates``): infra, then quality. Both pass: status
   ``passed`` and promote (reason ``run <run_id>``); otherwise status
   ``rejected`` with the reasons (the version is kept for inspection);
9. record the final status: ``succeeded`` (promoted) or ``rejected`` (a gate
   refused), with ``metrics`` (candidate, current, train, ``timings_s``,
   ``phases``) and ``gate_decisions`` (data validation, infra, quality) as
   JSON strings.

Any exception records ``failed`` with the error (and the timings so far) and
exits 1. The last stdout line is a JSON summary ``{"run_id", "status",
"model_version", "promoted", "reason", "metrics", "rows_train",
"rows_validation", "timings_s", "phases", ...}``.

**Timings** (``trainer.timing.PhaseTimer``): each step is a phase with its
wall-clock start and end, in ``metrics.phases`` (``origin`` and the list) and
as ``metrics.timings_s`` (``<phase>_s`` seconds and ``total_s``), and logged as
one ``[trainer] phases: ...`` line. The phases, in order: ``launch`` (the
launcher received the trigger, ``--trigger-received-at``, until it submitted
the job, ``--submitted-at``, the run's origin), ``interpreter`` (origin until
``main`` runs: process start and Python imports; a warm worker: the hand-over),
``import`` (TensorFlow and Keras), ``setup`` (config, BigQuery client,
registry), ``claim`` (claim and the ``running`` row), ``read``, ``validate``,
``train``, ``evaluate``, ``publish`` (metadata, ``model.keras`` and the
SavedModel written to the registry), ``gates``, ``promote`` (status and
``CURRENT``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any

from dataset.config import DatasetConfig, load_config
from trainer import claims, runs
from trainer import data as data_lib
from trainer.timing import PhaseTimer, process_start_time
from trainer.validation import DRIFT_BLOCK_THRESHOLD, MIN_ROWS

EARLY_STOPPING_FRACTION = 0.1
INFRA_SAMPLE_ROWS = 256
MAX_REASON_CHARS = 1000


def _say(message: str) -> None:
    print(f"[trainer] {message}", flush=True)


@dataclasses.dataclass
class TaskOptions:
    """Everything one training run needs (the parsed command line)."""

    config_path: str
    project: str
    bq_dataset: str
    registry: str
    run_id: str
    trigger_id: str
    backend: str = "local"
    rows: int | None = None
    start: str | None = None
    end: str | None = None
    epochs: int = 8
    seed: int = 0
    min_rows: int = MIN_ROWS
    block_on_drift: bool = False
    drift_block_threshold: float | None = DRIFT_BLOCK_THRESHOLD
    infra_time_limit_s: float = 30.0
    training_file: str | None = None
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    attempt_id: str | None = None  # the launcher's submission (trainer.claims)
    trigger_received_at: float | None = None  # epoch s the launcher pulled the trigger
    submitted_at: float | None = None  # epoch s the launcher submitted this job


class _Run:
    """Collects the facts of one run for the status rows and the summary."""

    def __init__(self, opts: TaskOptions, config: DatasetConfig, timer: PhaseTimer):
        self.opts = opts
        self.config = config
        self.started_at = runs.utcnow()
        self.timer = timer
        self.fields: dict[str, Any] = {}

    @property
    def timings(self) -> dict[str, float]:
        """Each phase's seconds, and ``total_s`` from the timer's origin."""
        return {**self.timer.seconds(), "total_s": self.timer.total_s()}

    def timing_metrics(self) -> dict[str, Any]:
        """What the status rows' ``metrics`` carry about time: durations and the timeline."""
        return {"timings_s": self.timings, "phases": self.timer.to_dict()}

    def row(self, status: str, **fields: Any) -> dict[str, Any]:
        return {
            "run_id": self.opts.run_id,
            "trigger_id": self.opts.trigger_id,
            "dataset": self.config.name,
            "backend": self.opts.backend,
            "status": status,
            "started_at": self.started_at,
            **fields,
        }


def load_config_any(path: str) -> DatasetConfig:
    """``load_config`` for a local path or a ``gs://`` URI (read with google-cloud-storage)."""
    return load_config(path)


def _truncate(text: str, limit: int = MAX_REASON_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _train(config: DatasetConfig, train_rows, registry, opts: TaskOptions, current_version):
    """Builds (optionally warm-starts) and fits the model.

    Returns:
        (model, warm_started, epochs run).
    """
    from model.features import encode_batch, label_array
    from model.keras_model import build_model, fit

    model = build_model(config, seed=opts.seed)
    warm = False
    if config.retraining.warm_start and current_version is not None:
        try:
            previous = registry.load_keras(current_version)
            old = [w.shape for w in previous.get_weights()]
            new = [w.shape for w in model.get_weights()]
            if old == new:
                model.set_weights(previous.get_weights())
                warm = True
                _say(f"warm start from {current_version}'s weights")
            else:
                _say(f"warm start skipped: {current_version} has other weight shapes")
        except Exception as e:  # noqa: BLE001 - a cold start is a fine fallback
            _say(f"warm start skipped: cannot load {current_version}: {e}")
    try:
        fit_rows, stop_rows = data_lib.split_by_time(train_rows, EARLY_STOPPING_FRACTION)
        validation = (encode_batch(stop_rows, config), label_array(stop_rows, config))
    except ValueError:
        fit_rows, validation = list(train_rows), None
    history = fit(
        model,
        encode_batch(fit_rows, config),
        label_array(fit_rows, config),
        epochs=opts.epochs,
        validation=validation,
    )
    return model, warm, len(history.history.get("loss", []))


def _quarantine(client, opts, config, result, window, run: _Run) -> int:
    rows = []
    for anomaly in result.errors:
        rows.append(
            {
                "run_id": opts.run_id,
                "check": anomaly["check"],
                "feature": anomaly["feature"],
                "detail": _truncate(anomaly["detail"]),
                "example_ids": json.dumps(anomaly["example_ids"]),
                "data_start": window["start"],
                "data_end": window["end"],
                "rows": window["rows"],
            }
        )
    table = runs.quarantine_table(opts.project, opts.bq_dataset, config)
    return runs.record_quarantine(client, table, rows)


def run_task(
    opts: TaskOptions,
    config: DatasetConfig,
    client,
    registry,
    state: dict[str, Any] | None = None,
    timer: PhaseTimer | None = None,
) -> dict[str, Any]:
    """Runs the steps; returns the summary. Exceptions propagate (``main`` records them).

    ``state``, if given, is filled with the run's facts as they become known
    (data range, row counts, model version), so a failure can record them.
    ``timer`` (default: a new one starting now) gets one phase per step:
    ``claim, read, validate, train, evaluate, publish, gates, promote``.
    """
    from model.features import encode_batch, label_array
    from trainer import gates
    from trainer.metrics import evaluate
    from trainer.validation import validate

    run = _Run(opts, config, timer if timer is not None else PhaseTimer())
    if state is not None:
        run.fields = state
    table = runs.runs_table(opts.project, opts.bq_dataset, config)
    with run.timer.phase("claim"):
        # One trainer per run: raises RunOwnedElsewhere if another trainer claimed it.
        claims.claim(registry.root, opts.run_id, opts.attempt_id, backend=opts.backend)
        runs.record_run_status(client, table, run.row("running"))
    _say(f"run {opts.run_id} (trigger {opts.trigger_id}, backend {opts.backend}): running")
    task = config.label.task
    policy = config.retraining

    with run.timer.phase("read"):
        if opts.training_file:
            source = opts.training_file
            rows = data_lib.read_training_file(
                source, config, rows=opts.rows, start=opts.start, end=opts.end
            )
        else:
            source = f"{opts.project}.{opts.bq_dataset}.{config.tables.training_examples}"
            rows = data_lib.read_training_window(
                client,
                opts.project,
                opts.bq_dataset,
                config,
                rows=opts.rows,
                start=opts.start,
                end=opts.end,
            )
    window = data_lib.time_range(rows)
    run.fields.update(data_start=window["start"], data_end=window["end"])
    _say(
        f"read {len(rows)} rows from {source} ({window['start']} .. {window['end']}) "
        f"in {run.timings['read_s']:.2f}s"
    )

    with run.timer.phase("validate"):
        current = registry.current()
        current_version = current.version if current else None
        previous_stats = (current.metadata.get("statistics") if current else None) or None
        result = validate(
            rows,
            config,
            previous_stats,
            min_rows=opts.min_rows,
            block_on_drift=opts.block_on_drift,
            drift_block_threshold=opts.drift_block_threshold,
        )
    validation_summary = {
        "ok": result.ok,
        "errors": result.errors,
        "warnings": result.warnings,
        "drift": result.drift,
        "previous_stats_version": current_version if previous_stats else None,
    }
    if not result.ok:
        count = _quarantine(client, opts, config, result, window, run)
        reason = _truncate(f"data validation: {result.summary()}")
        _say(f"data validation failed ({len(result.errors)} errors): {result.summary()}")
        _say(f"quarantined: {count} rows in {config.tables.data_quarantine}")
        runs.record_run_status(
            client,
            table,
            run.row(
                "rejected",
                reason=reason,
                finished_at=runs.utcnow(),
                promoted=False,
                metrics={"rows": len(rows), **run.timing_metrics()},
                gate_decisions={"data_validation": validation_summary},
                **run.fields,
            ),
        )
        _say(f"run {opts.run_id}: rejected")
        return {
            "run_id": opts.run_id,
            "trigger_id": opts.trigger_id,
            "status": "rejected",
            "reason": reason,
            "model_version": None,
            "promoted": False,
            "rows": len(rows),
            "anomalies": result.errors,
            **run.timing_metrics(),
        }
    if result.warnings:
        _say(f"data validation passed with warnings: {result.summary(severity='warning')}")
    else:
        _say(f"data validation passed ({len(rows)} rows, drift checked: {bool(result.drift)})")

    train_rows, val_rows = data_lib.split_by_time(rows, policy.validation_fraction)
    train_range, val_range = data_lib.time_range(train_rows), data_lib.time_range(val_rows)
    run.fields.update(rows_train=len(train_rows), rows_validation=len(val_rows))
    _say(
        f"split by event time at {val_range['start']}: {len(train_rows)} training rows, "
        f"{len(val_rows)} validation rows"
    )

    with run.timer.phase("train"):
        model, warm, epochs = _train(config, train_rows, registry, opts, current_version)
    _say(f"trained in {run.timings['train_s']:.1f}s ({epochs} epochs run)")

    with run.timer.phase("evaluate"):
        x_val, y_val = encode_batch(val_rows, config), label_array(val_rows, config)
        metrics = evaluate(model, x_val, y_val, task)
        train_metrics = evaluate(
            model, encode_batch(train_rows, config), label_array(train_rows, config), task
        )
        cur_version, current_metrics, current_error = gates.current_model_metrics(
            registry, x_val, y_val, task
        )
    _say(f"candidate on validation: {_short(metrics)}")
    if current_metrics is not None:
        _say(f"current {cur_version} on the same rows: {_short(current_metrics)}")
    elif current_error:
        _say(f"current {cur_version} cannot be evaluated: {current_error}")

    from model.features import feature_columns, feature_dim

    with run.timer.phase("publish"):
        metadata = {
            "dataset": config.name,
            "config_path": config.source_path,
            "source": "continuous-training",
            "task": task,
            "training_data": {
                "start": window["start"],
                "end": window["end"],
                "rows": len(rows),
                "rows_train": len(train_rows),
                "rows_validation": len(val_rows),
                "train_start": train_range["start"],
                "train_end": train_range["end"],
            },
            "validation_data": val_range,
            "metrics": metrics,
            "train_metrics": train_metrics,
            "current_metrics": current_metrics,
            "statistics": result.statistics,
            "data_validation": validation_summary,
            "run_id": opts.run_id,
            "trigger_id": opts.trigger_id,
            "parent_version": current_version,
            "warm_started": warm,
            "features": {"dim": feature_dim(config), "columns": feature_columns(config)},
            "trainer": "trainer.task",
            "backend": opts.backend,
            "training_source": source,
            **opts.metadata,
        }
        version = registry.publish(model, metadata, status="candidate", config=config)
    run.fields["model_version"] = version
    _say(f"published candidate {version} to {registry.root}")

    with run.timer.phase("gates"):
        infra = gates.infra_check(
            registry,
            version,
            x_val[:INFRA_SAMPLE_ROWS],
            time_limit_s=opts.infra_time_limit_s,
            task=task,
        )
        _say(f"infra gate: {'pass' if infra.passed else 'FAIL'}: {'; '.join(infra.reasons)}")
        quality = gates.quality_check(metrics, current_metrics, policy, task)
        if current_error:
            quality = dataclasses.replace(
                quality,
                reasons=[*quality.reasons, f"current {cur_version} not evaluable: {current_error}"],
            )
        _say(f"quality gate: {'pass' if quality.passed else 'FAIL'}: {'; '.join(quality.reasons)}")
    passed = infra.passed and quality.passed
    reasons = [f"{g.name}: {r}" for g in (infra, quality) for r in g.reasons]
    if passed:
        with run.timer.phase("promote"):
            registry.set_status(version, "passed", reasons)
            registry.promote(version, reason=f"run {opts.run_id}")
        status = "succeeded"
        reason = f"promoted {version} (previous: {current_version or 'none'})"
        _say(f"promoted {version}")
    else:
        failed = [f"{g.name}: {r}" for g in (infra, quality) if not g.passed for r in g.reasons]
        with run.timer.phase("promote"):  # here: keep it, marked rejected
            registry.set_status(version, "rejected", reasons)
        status = "rejected"
        reason = _truncate("gates refused: " + "; ".join(failed))
        _say(f"{version} rejected by the gates; {current_version or 'nothing'} stays current")

    all_metrics = {
        "candidate": metrics,
        "current": current_metrics,
        "current_version": cur_version,
        "train": train_metrics,
        "epochs": epochs,
        **run.timing_metrics(),
    }
    _say(f"phases: {run.timer.summary()}")
    decisions = {
        "data_validation": validation_summary,
        "infra": infra.to_dict(),
        "quality": quality.to_dict(),
        "promoted": passed,
    }
    runs.record_run_status(
        client,
        table,
        run.row(
            status,
            reason=reason,
            finished_at=runs.utcnow(),
            promoted=passed,
            metrics=all_metrics,
            gate_decisions=decisions,
            **run.fields,
        ),
    )
    _say(f"run {opts.run_id}: {status} in {run.timings['total_s']:.1f}s")
    return {
        "run_id": opts.run_id,
        "trigger_id": opts.trigger_id,
        "status": status,
        "reason": reason,
        "model_version": version,
        "promoted": passed,
        "previous_version": current_version,
        "metrics": metrics,
        "current_metrics": current_metrics,
        "rows_train": len(train_rows),
        "rows_validation": len(val_rows),
        "data_start": window["start"],
        "data_end": window["end"],
        **run.timing_metrics(),
    }


def _short(metrics: dict[str, Any]) -> str:
    from model.registry import format_metrics

    return format_metrics(metrics, limit=5)


def _threshold(value: str) -> float | None:
    if value.lower() in ("none", "off", ""):
        return None
    number = float(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 or 'none', got {value}")
    return number


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trainer.task",
        description="One continuous-training run: validate, train, gate, publish, promote.",
    )
    p.add_argument("--config", required=True, help="dataset config (local path or gs://)")
    p.add_argument("--project", required=True, help="BigQuery project")
    p.add_argument("--bq_dataset", "--bq-dataset", dest="bq_dataset", required=True)
    p.add_argument("--registry", required=True, help="model registry root (dir or gs://)")
    p.add_argument("--run-id", "--run_id", dest="run_id", required=True)
    p.add_argument("--trigger-id", "--trigger_id", dest="trigger_id", required=True)
    p.add_argument("--backend", default="local", help="recorded in training_runs (local|vertex)")
    p.add_argument(
        "--rows", type=int, default=None, help="window size (default: training_window_rows)"
    )
    p.add_argument("--start", default=None, help="event-time lower bound (RFC 3339, inclusive)")
    p.add_argument("--end", default=None, help="event-time upper bound (RFC 3339, exclusive)")
    p.add_argument("--epochs", type=int, default=8, help="maximum epochs (default 8)")
    p.add_argument("--seed", type=int, default=0, help="model seed (default 0)")
    p.add_argument(
        "--min-rows", type=int, default=MIN_ROWS, help=f"fewest rows to train on ({MIN_ROWS})"
    )
    p.add_argument(
        "--block-on-drift",
        action="store_true",
        help="refuse to train on any drift above retraining.drift_threshold",
    )
    p.add_argument(
        "--drift-block-threshold",
        type=_threshold,
        default=DRIFT_BLOCK_THRESHOLD,
        help=f"drift distance that always blocks (default {DRIFT_BLOCK_THRESHOLD}; 'none')",
    )
    p.add_argument(
        "--infra-time-limit", type=float, default=30.0, help="infra gate limit, seconds (30)"
    )
    p.add_argument(
        "--training-file",
        default=None,
        help="read the window from this JSON Lines file of training-table rows, not BigQuery",
    )
    p.add_argument(
        "--metadata",
        type=_json_object,
        default={},
        help="a JSON object added to the version's metadata (e.g. where the data came from)",
    )
    p.add_argument("--attempt-id", help="the launcher's submission id, recorded in the run's claim")
    p.add_argument(
        "--trigger-received-at",
        type=float,
        default=None,
        help="epoch seconds the launcher received the trigger (the 'launch' phase starts)",
    )
    p.add_argument(
        "--submitted-at",
        type=float,
        default=None,
        help="epoch seconds the launcher submitted this job (the run's origin)",
    )
    return p


def _json_object(value: str) -> dict[str, Any]:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {value!r}")
    return parsed


def options_from_args(args: argparse.Namespace) -> TaskOptions:
    return TaskOptions(
        config_path=args.config,
        project=args.project,
        bq_dataset=args.bq_dataset,
        registry=args.registry,
        run_id=args.run_id,
        trigger_id=args.trigger_id,
        backend=args.backend,
        rows=args.rows,
        start=args.start,
        end=args.end,
        epochs=args.epochs,
        seed=args.seed,
        min_rows=args.min_rows,
        block_on_drift=args.block_on_drift,
        drift_block_threshold=args.drift_block_threshold,
        infra_time_limit_s=args.infra_time_limit,
        training_file=args.training_file,
        metadata=dict(args.metadata),
        attempt_id=args.attempt_id,
        trigger_received_at=args.trigger_received_at,
        submitted_at=args.submitted_at,
    )


def _import_tensorflow() -> None:
    """Imports TensorFlow and Keras (the trainer's slowest start-up step, timed on its own)."""
    import keras  # noqa: F401
    import tensorflow  # noqa: F401


def start_timer(opts: TaskOptions, started_at: float | None, entered: float) -> PhaseTimer:
    """The run's timer, with the phases before ``main`` could act.

    The origin is when the launcher submitted the job (``--submitted-at``);
    without it ``started_at`` (a warm worker: when it got the job), else the
    process start (psutil; to about a second). ``launch``: the launcher
    received the trigger (``--trigger-received-at``) until the origin (its
    bookkeeping: ``queued`` and ``submitting`` rows, the ack); ``interpreter``:
    the origin until ``main`` was entered (process start, Python, this
    module's imports; a warm worker: handing the job over).
    """
    if opts.submitted_at is not None:
        origin = opts.submitted_at
    else:
        origin = process_start_time() if started_at is None else started_at
    timer = PhaseTimer(origin=origin)
    if opts.trigger_received_at is not None:
        timer.add("launch", opts.trigger_received_at, max(origin, opts.trigger_received_at))
    timer.add("interpreter", origin, max(origin, entered))
    return timer


def main(argv: Sequence[str] | None = None, client=None, *, started_at: float | None = None) -> int:
    """Entry point. Returns 0 for a finished run (succeeded or rejected), 1 for a failure.

    Args:
        argv: command-line arguments.
        client: optional BigQuery client (default ``dataset.resources.bigquery_client``).
        started_at: epoch seconds this run counts from (a warm worker: when it
            received the job); default: this process's start.
    """
    entered = time.time()
    args = build_parser().parse_args(argv)
    opts = options_from_args(args)
    if opts.epochs <= 0:
        print("error: --epochs must be positive", file=sys.stderr)
        return 2
    if opts.rows is not None and opts.rows <= 0:
        print("error: --rows must be positive", file=sys.stderr)
        return 2
    config = None
    own_client = client is None
    started = runs.utcnow()
    state: dict[str, Any] = {}
    timer = start_timer(opts, started_at, entered)
    try:
        with timer.phase("import"):
            _import_tensorflow()
        with timer.phase("setup"):
            config = load_config_any(opts.config_path)
            if client is None:
                from dataset.resources import bigquery_client

                client = bigquery_client(opts.project)
            from model.registry import ModelRegistry

            registry = ModelRegistry(opts.registry)
        summary = run_task(opts, config, client, registry, state, timer)
        print(json.dumps(summary, default=str), flush=True)
        return 0
    except claims.RunOwnedElsewhere as e:  # not ours: record nothing, train nothing
        _say(f"refused: {e}")
        print(json.dumps({"run_id": opts.run_id, "status": "refused", "error": str(e)}), flush=True)
        return claims.REFUSED_EXIT_CODE
    except Exception as e:  # noqa: BLE001 - every failure is recorded, then exit 1
        error = f"{type(e).__name__}: {e}"
        trace = traceback.format_exc()
        print(trace, file=sys.stderr)
        _say(f"run {opts.run_id}: failed: {error}")
        if config is not None and client is not None:
            try:
                runs.record_run_status(
                    client,
                    runs.runs_table(opts.project, opts.bq_dataset, config),
                    {
                        "run_id": opts.run_id,
                        "trigger_id": opts.trigger_id,
                        "dataset": config.name,
                        "backend": opts.backend,
                        "status": "failed",
                        "reason": _truncate(error),
                        "error": _truncate(trace, 8000),
                        "started_at": started,
                        "finished_at": runs.utcnow(),
                        "promoted": False,
                        "metrics": {
                            "timings_s": {**timer.seconds(), "total_s": timer.total_s()},
                            "phases": timer.to_dict(),
                        },
                        **state,
                    },
                )
            except Exception as record_error:  # noqa: BLE001
                print(f"error: could not record the failure: {record_error}", file=sys.stderr)
        print(json.dumps({"run_id": opts.run_id, "status": "failed", "error": error}), flush=True)
        return 1
    finally:
        if own_client and client is not None:
            client.close()


if __name__ == "__main__":
    sys.exit(main())
