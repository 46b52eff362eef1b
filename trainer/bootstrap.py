"""The first model: simulated history, then ONE run of the trainer, like every later model.

Usage::

    python -m trainer.bootstrap --config configs/traffic.yaml --registry .local/registry \\
        [--project P --bq_dataset D] --events 20000 [--seed 7] \\
        [--end-time EPOCH|ISO (default now)] [--drift] [--if-empty] [--rate 10] \\
        [--sensors 300] [--day-seconds 600] [--day-origin EPOCH] [--epochs 8] \\
        [--history-file PATH]
    python -m trainer.bootstrap --config CONFIG --registry .local/registry \\
        --from-file DATA.jsonl|DATA.csv --rows N [--rest-file REST.jsonl] [--project P ...]

Steps (simulated history):

1. generate ``--events`` past readings ending at ``--end-time`` with
   ``TrafficSimulator(seed=...)`` (``--drift``: post-drift "road works" history);
2. turn each into the training-table row the streaming pipeline would write,
   with the pipeline's own functions (``transforms.validation.validate_payload``,
   ``transforms.labeling.training_row``), into a JSON Lines file
   (``--history-file``, default a temporary file);
3. run the trainer on it: ``trainer.task.main`` with ``--training-file``,
   ``--rows <events>`` (the whole history is the window), run id
   ``bootstrap-<hex>`` and trigger id ``bootstrap``. So the first model goes
   through the same data validation, training, evaluation, infra and quality
   gates as every later one; with no current model, the quality gate checks
   the absolute floor (``min_accuracy``, or beating the constant predictor)
   and skips the comparison. It is promoted only if it passes.

The run's status rows go to ``training_runs`` in ``--project``/``--bq_dataset``
when given (``run_local.sh`` does); without them, to an in-memory log printed
with the summary (no BigQuery needed: tests, benchmarks).

``--if-empty`` does nothing (exit 0) when the registry already has a current
version. The config must describe the traffic simulator's readings (its key,
time, features and an inline label); other streams bring their own history.

Progress lines go to stdout (``[bootstrap]``, then the trainer's ``[trainer]``);
the last line is one JSON object ``{"version", "status", "promoted", "metrics",
"run_id", "reason", "registry"}``. Exit status: 0 promoted (or skipped), 1 the
trainer rejected the candidate or failed, 2 a user error (``error: ...`` on
stderr).

With ``--from-file`` the history is the first ``--rows`` valid rows of the
user's own file instead (``trainer.file_history.split_file``: the pipeline's
validation and training rows, separate labels joined), trained on by the same
single trainer run; the file's remaining lines go to ``--rest-file``, which
``run_local.sh --replay FILE --bootstrap-rows N`` then replays. Any config
works in this mode. The JSON result adds ``split`` (rows taken, invalid,
joined/timed-out labels, rows left) and ``rest_file``.

A second version by hand during a run goes through the gates against the
current one::

    python -m trainer.bootstrap --config configs/traffic.yaml --registry .local/registry \\
        --events 20000 --seed 8 --drift
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from dataset.config import DatasetConfig, load_config
from dataset.times import parse_time_arg, rfc3339
from model.registry import ModelRegistry
from simulator.exports import simulated_history
from simulator.messages import check_config_matches
from trainer import data as data_lib

MIN_EVENTS = 100
TRIGGER_ID = "bootstrap"
NO_PROJECT = "no-project"
NO_DATASET = "no_dataset"


class BootstrapError(ValueError):
    """A user error: bad arguments or a config the simulator cannot produce."""


def _say(message: str) -> None:
    print(f"[bootstrap] {message}", flush=True)


def generate_history(
    config: DatasetConfig,
    n_events: int,
    end_time: float,
    *,
    seed: int = 7,
    rate: float = 10.0,
    n_sensors: int = 300,
    day_seconds: float = 600.0,
    day_origin: float = 0.0,
    drift: bool = False,
) -> tuple[list[dict[str, Any]], list[float]]:
    """Simulated past readings ending before ``end_time`` and their event times.

    Args:
        config: a dataset config describing the traffic simulator's readings.
        n_events: number of readings.
        end_time: epoch seconds; all readings are strictly earlier.
        seed: the simulator seed.
        rate: readings per second (all sensors together).
        n_sensors: number of simulated sensors.
        day_seconds: real seconds per simulated day (match the live publisher's).
        day_origin: epoch seconds a simulated day starts at (match the publisher's).
        drift: generate post-drift data only.

    Returns:
        ``(readings, event_times)``, oldest first.

    Raises:
        BootstrapError: for a config the simulator cannot produce, or bad arguments.
    """
    if n_events < MIN_EVENTS:
        raise BootstrapError(f"--events must be at least {MIN_EVENTS}, got {n_events}")
    try:
        events = simulated_history(
            config,
            n_events,
            end_time,
            rate=rate,
            n_sensors=n_sensors,
            seed=seed,
            day_seconds=day_seconds,
            day_origin=day_origin,
            drift_after=0.0 if drift else None,
        )
        check_supported(config, events[0][1])
    except ValueError as e:
        raise BootstrapError(str(e)) from e
    return [r for _, r in events], [t for t, _ in events]


def check_supported(config: DatasetConfig, sample: Mapping[str, Any]) -> None:
    """Raises ``BootstrapError`` unless ``config`` describes the simulator's readings."""
    check_config_matches(config, dict(sample), "the traffic simulator's readings")
    if config.label.source != "inline":
        raise BootstrapError(
            f"config {config.source_path or config.name!r} has separate label messages; "
            "the traffic simulator's readings carry their label inline"
        )


def training_rows(
    config: DatasetConfig, readings: Sequence[Mapping[str, Any]], ingested_at: float, prefix: str
) -> Iterator[dict[str, Any]]:
    """The training-table rows the streaming pipeline would write for ``readings``.

    Uses the pipeline's own validation and row building, so a reading the
    pipeline would dead-letter raises here instead of being trained on.

    Raises:
        BootstrapError: naming the first reading the pipeline would reject.
    """
    from model.history import attach_history
    from transforms.labeling import training_row
    from transforms.validation import RecordError, validate_payload

    records = []
    for i, reading in enumerate(readings):
        try:
            records.append(validate_payload(dict(reading), config, f"{prefix}-{i}"))
        except RecordError as e:
            raise BootstrapError(f"simulated reading {i} is invalid for the config: {e}") from e
    for record in attach_history(config, records):  # history features, as the stream's
        yield training_row(
            config, record, record["label"], record["event_time"], "inline", now=ingested_at
        )


class _SeqResult:
    """The result of ``RunLog.query``: one row with the run's highest ``seq``."""

    def __init__(self, seq: int) -> None:
        self.seq = seq

    def result(self, **_: Any) -> list[dict[str, int]]:
        return [{"seq": self.seq}]


class RunLog:
    """Stands in for the BigQuery client when no project is given: keeps the status rows."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def insert_rows_json(self, table: str, rows: Sequence[Mapping[str, Any]], **_: Any) -> list:
        self.rows.extend({"table": table, **row} for row in rows)
        return []

    def query(self, sql: str, job_config: Any = None, **_: Any) -> _SeqResult:
        """Answers ``trainer.runs.next_seq``'s query (the only one a run makes) from the rows."""
        params = {p.name: p.value for p in getattr(job_config, "query_parameters", [])}
        if "MAX(seq)" not in sql or "run_id" not in params:
            raise NotImplementedError(f"RunLog answers only the run-sequence query, not: {sql}")
        seqs = [int(r.get("seq") or 0) for r in self.rows if r.get("run_id") == params["run_id"]]
        return _SeqResult(max(seqs, default=0))

    def close(self) -> None:
        pass


class _Tee(io.TextIOBase):
    """Writes through to ``stream`` and keeps the last complete line."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.last_line = ""
        self._partial = ""

    def write(self, text: str) -> int:
        self.stream.write(text)
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            if line.strip():
                self.last_line = line
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def bootstrap(
    config_path: str,
    registry_root: str,
    *,
    n_events: int,
    end_time: float,
    project: str | None = None,
    bq_dataset: str | None = None,
    seed: int = 7,
    drift: bool = False,
    rate: float = 10.0,
    n_sensors: int = 300,
    day_seconds: float = 600.0,
    day_origin: float = 0.0,
    epochs: int = 8,
    history_file: str | None = None,
    client=None,
) -> dict[str, Any]:
    """Generates the history and runs the trainer on it once.

    Args:
        client: the BigQuery client for the run's status rows (default: one for
            ``project`` when given, else a ``RunLog``).

    Returns:
        ``{"version", "status", "promoted", "metrics", "run_id", "reason",
        "registry"}`` (plus ``"run_log"`` without a project).

    Raises:
        BootstrapError: for a config the simulator cannot produce, or bad arguments.
    """
    if (project is None) != (bq_dataset is None):
        raise BootstrapError("give both --project and --bq_dataset, or neither")
    config = load_config(config_path)
    started = time.monotonic()
    _say(
        f"generating {n_events} {'post-drift ' if drift else ''}readings "
        f"(seed {seed}, {rate:g}/s, {n_sensors} sensors) ending {rfc3339(end_time)}"
    )
    readings, _ = generate_history(
        config,
        n_events,
        end_time,
        seed=seed,
        rate=rate,
        n_sensors=n_sensors,
        day_seconds=day_seconds,
        day_origin=day_origin,
        drift=drift,
    )
    run_id = f"bootstrap-{uuid.uuid4().hex[:12]}"
    simulator = {
        "seed": seed,
        "events": n_events,
        "rate": rate,
        "sensors": n_sensors,
        "day_seconds": day_seconds,
        "day_origin": day_origin,
        "drift": drift,
        "end_time": rfc3339(end_time),
    }
    rows = training_rows(config, readings, end_time, f"{run_id}-{seed}")
    result = _train_once(
        config_path,
        registry_root,
        rows,
        run_id=run_id,
        metadata={"source": "simulated-history", "simulator": simulator},
        project=project,
        bq_dataset=bq_dataset,
        seed=seed,
        epochs=epochs,
        history_file=history_file,
        client=client,
    )
    _say(f"done in {time.monotonic() - started:.1f}s: {result['status']}")
    return result


def bootstrap_from_file(
    config_path: str,
    registry_root: str,
    data_file: str,
    *,
    n_rows: int,
    rest_file: str | None = None,
    project: str | None = None,
    bq_dataset: str | None = None,
    seed: int = 7,
    epochs: int = 8,
    history_file: str | None = None,
    client=None,
) -> dict[str, Any]:
    """Trains the first model on the first ``n_rows`` valid rows of a user's file.

    The rows go through the pipeline's validation and row building
    (``trainer.file_history.split_file``), then one run of the trainer, like
    ``bootstrap``. The file's remaining lines are written to ``rest_file``
    (when given): what the live loop replays, so no row is both trained on
    here and predicted live.

    Returns:
        ``bootstrap``'s result plus ``"split"`` (the counters of
        ``FileSplit.counts``) and ``"rest_file"``.

    Raises:
        BootstrapError: bad arguments, a missing file, too few valid rows.
    """
    from trainer.file_history import split_file, write_rest

    if (project is None) != (bq_dataset is None):
        raise BootstrapError("give both --project and --bq_dataset, or neither")
    config = load_config(config_path)
    started = time.monotonic()
    run_id = f"bootstrap-{uuid.uuid4().hex[:12]}"
    _say(f"reading the first {n_rows} valid rows of {data_file}")
    try:
        split = split_file(data_file, config, n_rows, ingested_at=time.time(), prefix=run_id)
    except ValueError as e:
        raise BootstrapError(str(e)) from e
    counts = split.counts()
    _say("split: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if rest_file is not None:
        write_rest(rest_file, split.rest_lines)
        _say(f"wrote the {split.rest_rows} rows to replay to {rest_file}")
    if not split.training_rows:
        raise BootstrapError(
            f"the first {n_rows} valid rows of {data_file} give no labeled training rows"
        )
    metadata = {
        "source": "file",
        "file": {"path": os.path.abspath(data_file), "rows": n_rows, **counts},
    }
    result = _train_once(
        config_path,
        registry_root,
        split.training_rows,
        run_id=run_id,
        metadata=metadata,
        project=project,
        bq_dataset=bq_dataset,
        seed=seed,
        epochs=epochs,
        history_file=history_file,
        client=client,
    )
    result["split"] = counts
    result["rest_file"] = rest_file
    _say(f"done in {time.monotonic() - started:.1f}s: {result['status']}")
    return result


def _train_once(
    config_path: str,
    registry_root: str,
    rows: Iterable[Mapping[str, Any]],
    *,
    run_id: str,
    metadata: Mapping[str, Any],
    project: str | None,
    bq_dataset: str | None,
    seed: int,
    epochs: int,
    history_file: str | None,
    client,
) -> dict[str, Any]:
    """Writes ``rows`` as a training file and runs ``trainer.task`` on all of them once."""
    with contextlib.ExitStack() as stack:
        if history_file is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bootstrap-"))
            history_file = os.path.join(tmp, "history.jsonl")
        count = data_lib.write_training_file(history_file, rows)
        _say(f"wrote {count} training rows to {history_file}; running the trainer")
        log = None
        if client is None and project is None:
            client = log = RunLog()
        argv = [
            "--config", config_path,
            "--project", project or NO_PROJECT,
            "--bq_dataset", bq_dataset or NO_DATASET,
            "--registry", registry_root,
            "--run-id", run_id,
            "--trigger-id", TRIGGER_ID,
            "--backend", "local",
            "--training-file", history_file,
            "--rows", str(count),
            "--epochs", str(epochs),
            "--seed", str(seed),
            "--metadata", json.dumps(metadata),
        ]  # fmt: skip
        summary = _run_trainer(argv, client)
    result = {
        "version": summary.get("model_version"),
        "status": summary.get("status"),
        "promoted": bool(summary.get("promoted")),
        "metrics": summary.get("metrics"),
        "run_id": run_id,
        "reason": summary.get("reason") or summary.get("error"),
        "registry": registry_root,
    }
    if log is not None:
        result["run_log"] = [r["status"] for r in log.rows if "status" in r]
    return result


def _run_trainer(argv: list[str], client) -> dict[str, Any]:
    """``trainer.task.main`` in this process; returns its JSON summary (its last line)."""
    from trainer import task

    tee = _Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        task.main(argv, client=client)
    try:
        return json.loads(tee.last_line)
    except json.JSONDecodeError:
        return {"status": "failed", "error": f"no summary from the trainer: {tee.last_line!r}"}


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return number


def _time(value: str) -> float:
    try:
        return parse_time_arg(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.bootstrap",
        description="Train the first model: simulated history, then one run of the trainer.",
    )
    parser.add_argument("--config", required=True, help="dataset config (the simulator's fields)")
    parser.add_argument(
        "--registry",
        default=os.environ.get("MODEL_REGISTRY", ".local/registry"),
        help="registry root, a directory or gs:// path (default: $MODEL_REGISTRY "
        "or .local/registry)",
    )
    parser.add_argument("--project", default=None, help="BigQuery project for training_runs")
    parser.add_argument(
        "--bq_dataset", "--bq-dataset", dest="bq_dataset", default=None, help="BigQuery dataset"
    )
    parser.add_argument("--events", type=int, default=20000, help="readings (default 20000)")
    parser.add_argument("--seed", type=int, default=7, help="simulator and model seed (7)")
    parser.add_argument(
        "--end-time",
        type=_time,
        default=None,
        help="end of the history, epoch seconds or ISO-8601 with a zone (default: now)",
    )
    parser.add_argument("--drift", action="store_true", help="generate post-drift history")
    parser.add_argument(
        "--if-empty",
        action="store_true",
        help="do nothing if the registry already has a current version",
    )
    parser.add_argument("--rate", type=_positive_float, default=10.0, help="readings/s (10)")
    parser.add_argument("--sensors", type=int, default=300, help="simulated sensors (300)")
    parser.add_argument(
        "--day-seconds", type=_positive_float, default=600.0, help="seconds per day (600)"
    )
    parser.add_argument(
        "--day-origin",
        type=float,
        default=0.0,
        metavar="EPOCH_SECONDS",
        help="instant a simulated day starts at 00:00 (0; match the publisher's)",
    )
    parser.add_argument("--epochs", type=int, default=8, help="maximum epochs (8)")
    parser.add_argument(
        "--history-file", default=None, help="keep the training rows here (JSON Lines)"
    )
    parser.add_argument(
        "--from-file",
        default=None,
        metavar="FILE",
        help="train on the first --rows valid rows of this JSONL/CSV file (described by "
        "--config) instead of simulated history",
    )
    parser.add_argument(
        "--rows", type=int, default=None, help="with --from-file: valid rows to train on"
    )
    parser.add_argument(
        "--rest-file",
        default=None,
        help="with --from-file: write the file's remaining rows here (same format), to replay",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.epochs <= 0:
            raise BootstrapError(f"--epochs must be positive, got {args.epochs}")
        registry = ModelRegistry(args.registry)
        if args.if_empty:
            current = registry.current_version()
            if current is not None:
                _say(
                    f"registry {registry.root} already has current version {current}; nothing to do"
                )
                print(
                    json.dumps(
                        {"version": current, "metrics": None, "promoted": False, "skipped": True}
                    )
                )
                return 0
        if args.from_file is None and (args.rows is not None or args.rest_file is not None):
            raise BootstrapError("--rows and --rest-file go with --from-file")
        if args.from_file is not None:
            if args.rows is None:
                raise BootstrapError("--from-file needs --rows N (the valid rows to train on)")
            if args.rows < 1:
                raise BootstrapError(f"--rows must be at least 1, got {args.rows}")
            result = bootstrap_from_file(
                args.config,
                args.registry,
                args.from_file,
                n_rows=args.rows,
                rest_file=args.rest_file,
                project=args.project,
                bq_dataset=args.bq_dataset,
                seed=args.seed,
                epochs=args.epochs,
                history_file=args.history_file,
            )
            print(json.dumps(result, default=str))
            return 0 if result["promoted"] else 1
        result = bootstrap(
            args.config,
            args.registry,
            n_events=args.events,
            end_time=time.time() if args.end_time is None else args.end_time,
            project=args.project,
            bq_dataset=args.bq_dataset,
            seed=args.seed,
            drift=args.drift,
            rate=args.rate,
            n_sensors=args.sensors,
            day_seconds=args.day_seconds,
            day_origin=args.day_origin,
            epochs=args.epochs,
            history_file=args.history_file,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, default=str))
    return 0 if result["promoted"] else 1


if __name__ == "__main__":
    sys.exit(main())
