"""Trains the first model from simulated history, so the loop can predict at once.

Usage::

    python -m trainer.bootstrap --config configs/traffic.yaml --registry .local/registry \\
        --events 20000 [--seed 7] [--end-time EPOCH|ISO (default now)] [--drift] \\
        [--promote/--no-promote] [--if-empty] [--rate 10] [--sensors 300] \\
        [--day-seconds 600] [--epochs 8]

Steps: generate ``--events`` past readings ending at ``--end-time`` with
``TrafficSimulator(seed=...).history(...)``; split by event time (the last 20%
is validation, so nothing from the future leaks into training); encode with
``model.features``; build and fit ``model.keras_model`` (early stopping on the
last 10% of the *training* period, not on the validation set); evaluate on the
validation period with ``trainer.metrics.evaluate``; publish to the registry
(``source: simulated-history``) and promote unless ``--no-promote``.

``--drift`` generates post-drift ("road works") history: the simulator's drift
is scheduled at epoch 0, so every reading is drifted. ``--if-empty`` does
nothing (exit 0) when the registry already has a current version.

Progress lines go to stdout; the last line is one JSON object
``{"version", "metrics", "promoted", ...}``. Errors print ``error: ...`` to
stderr and exit with status 2. Only the traffic dataset has a simulator.

A second version by hand during a run::

    python -m trainer.bootstrap --config configs/traffic.yaml --registry .local/registry \\
        --events 20000 --seed 8 --drift --no-promote
    python -m model.registry --registry .local/registry promote <version>
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from dataset.config import DatasetConfig, load_config
from dataset.times import parse_time_arg, rfc3339
from model.registry import ModelRegistry
from simulator.messages import check_config_matches, event_time_of
from simulator.traffic import TrafficSimulator

VALIDATION_FRACTION = 0.2
EARLY_STOPPING_FRACTION = 0.1
MIN_EVENTS = 100
SUPPORTED_DATASETS = ("traffic",)


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
        config: the dataset config (must be the traffic dataset).
        n_events: number of readings.
        end_time: epoch seconds; all readings are strictly earlier.
        seed: the simulator seed.
        rate: readings per second (all sensors together).
        n_sensors: number of simulated sensors.
        day_seconds: real seconds per simulated day (match the live publisher's).
        day_origin: epoch seconds a simulated day starts at (match the publisher's).
        drift: generate post-drift data (the drift is scheduled at epoch 0).

    Returns:
        ``(rows, event_times)``, oldest first.

    Raises:
        BootstrapError: for a non-traffic config or bad arguments.
    """
    if config.name not in SUPPORTED_DATASETS:
        raise BootstrapError(
            f"dataset {config.name!r} ({config.source_path}) has no simulator; "
            f"trainer.bootstrap supports only: {', '.join(SUPPORTED_DATASETS)}"
        )
    if n_events < MIN_EVENTS:
        raise BootstrapError(f"--events must be at least {MIN_EVENTS}, got {n_events}")
    try:
        sim = TrafficSimulator(
            n_sensors=n_sensors,
            seed=seed,
            day_seconds=day_seconds,
            drift_after_seconds=0.0 if drift else None,
            start_time=0.0,
            day_origin=day_origin,
        )
        rows = sim.history(n_events, end_time, rate)
    except ValueError as e:
        raise BootstrapError(str(e)) from e
    try:
        check_config_matches(config, rows[0], "the traffic simulator's readings")
        times = [event_time_of(row, config) for row in rows]
    except ValueError as e:
        raise BootstrapError(str(e)) from e
    return rows, times


def split_by_time(
    rows: Sequence[dict[str, Any]], times: Sequence[float], holdout_fraction: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float]:
    """Splits rows at an event-time cutoff: the latest ``holdout_fraction`` is held out.

    Every held-out row is at or after the cutoff and every kept row strictly
    before it, whatever the input order.

    Returns:
        ``(earlier, later, cutoff_time)``.

    Raises:
        ValueError: if either side would be empty.
    """
    if len(rows) != len(times):
        raise ValueError(f"{len(rows)} rows but {len(times)} times")
    order = sorted(range(len(rows)), key=lambda i: times[i])
    cut_index = int(math.floor(len(order) * (1.0 - holdout_fraction)))
    if cut_index <= 0 or cut_index >= len(order):
        raise ValueError(f"cannot hold out {holdout_fraction:.0%} of {len(rows)} rows")
    cutoff = times[order[cut_index]]
    earlier = [rows[i] for i in order if times[i] < cutoff]
    later = [rows[i] for i in order if times[i] >= cutoff]
    if not earlier or not later:
        raise ValueError(f"all {len(rows)} rows share one event time; cannot split by time")
    return earlier, later, cutoff


def _time_range(rows: Sequence[dict[str, Any]], config: DatasetConfig) -> dict[str, Any]:
    times = [event_time_of(r, config) for r in rows]
    return {"start": rfc3339(min(times)), "end": rfc3339(max(times)), "rows": len(rows)}


def train_and_evaluate(
    config: DatasetConfig,
    train_rows: Sequence[dict[str, Any]],
    validation_rows: Sequence[dict[str, Any]],
    *,
    seed: int = 7,
    epochs: int = 8,
):
    """Fits the model on ``train_rows`` and evaluates it on ``validation_rows``.

    Early stopping watches the last ``EARLY_STOPPING_FRACTION`` of the training
    period, so the validation metrics stay an honest out-of-time estimate.

    Returns:
        ``(model, validation_metrics, train_metrics)``.
    """
    from model.features import encode_batch, label_array
    from model.keras_model import build_model, fit
    from trainer.metrics import evaluate

    times = [event_time_of(r, config) for r in train_rows]
    fit_rows, stop_rows, _ = split_by_time(train_rows, times, EARLY_STOPPING_FRACTION)
    x_fit, y_fit = encode_batch(fit_rows, config), label_array(fit_rows, config)
    x_stop, y_stop = encode_batch(stop_rows, config), label_array(stop_rows, config)
    x_val, y_val = encode_batch(validation_rows, config), label_array(validation_rows, config)
    model = build_model(config, seed=seed)
    fit(model, x_fit, y_fit, epochs=epochs, validation=(x_stop, y_stop))
    task = config.label.task
    x_train = encode_batch(train_rows, config)
    train_metrics = evaluate(model, x_train, label_array(train_rows, config), task)
    return model, evaluate(model, x_val, y_val, task), train_metrics


def beats_baseline(metrics: dict[str, Any], task: str) -> bool:
    """Whether validation metrics beat the constant-prediction baseline."""
    if task == "binary_classification":
        return metrics["accuracy"] > metrics["baseline_accuracy"] or (
            metrics["log_loss"] < metrics["baseline_log_loss"]
        )
    return metrics["rmse"] < metrics["baseline_rmse"]


def bootstrap(
    config: DatasetConfig,
    registry: ModelRegistry,
    *,
    n_events: int,
    end_time: float,
    seed: int = 7,
    drift: bool = False,
    promote: bool = True,
    rate: float = 10.0,
    n_sensors: int = 300,
    day_seconds: float = 600.0,
    day_origin: float = 0.0,
    epochs: int = 8,
) -> dict[str, Any]:
    """Generates history, trains, evaluates, publishes (and promotes) one version.

    Returns:
        ``{"version", "metrics", "promoted", "registry", "beats_baseline"}``.

    Raises:
        BootstrapError: for a non-traffic config or bad arguments.
    """
    started = time.monotonic()
    _say(
        f"generating {n_events} {'post-drift ' if drift else ''}readings "
        f"(seed {seed}, {rate:g}/s, {n_sensors} sensors) ending {rfc3339(end_time)}"
    )
    rows, times = generate_history(
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
    train_rows, val_rows, cutoff = split_by_time(rows, times, VALIDATION_FRACTION)
    _say(
        f"split at {rfc3339(cutoff)}: {len(train_rows)} training rows, "
        f"{len(val_rows)} validation rows (latest {VALIDATION_FRACTION:.0%})"
    )
    _say(f"training ({epochs} epochs max) ...")
    t0 = time.monotonic()
    model, metrics, train_metrics = train_and_evaluate(
        config, train_rows, val_rows, seed=seed, epochs=epochs
    )
    task = config.label.task
    good = beats_baseline(metrics, task)
    _say(f"trained in {time.monotonic() - t0:.1f}s; validation: {_short(metrics)}")
    if not good:
        _say("WARNING: the model does not beat the constant baseline on validation")

    from model.features import feature_columns, feature_dim

    metadata = {
        "dataset": config.name,
        "config_path": config.source_path,
        "source": "simulated-history",
        "task": task,
        "training_data": _time_range(train_rows, config),
        "validation_data": _time_range(val_rows, config),
        "metrics": metrics,
        "train_metrics": train_metrics,
        "features": {"dim": feature_dim(config), "columns": feature_columns(config)},
        "simulator": {
            "seed": seed,
            "events": n_events,
            "rate": rate,
            "sensors": n_sensors,
            "day_seconds": day_seconds,
            "day_origin": day_origin,
            "drift": drift,
            "end_time": rfc3339(end_time),
        },
        "trainer": "trainer.bootstrap",
    }
    version = registry.publish(model, metadata)
    _say(f"published {version} to {registry.root}")
    if promote:
        reason = f"bootstrap from simulated history (seed {seed}{', drift' if drift else ''})"
        registry.promote(version, reason=reason)
        _say(f"promoted {version} (current version)")
    else:
        _say(
            f"not promoted; promote with: python -m model.registry --registry {registry.root} "
            f"promote {version}"
        )
    _say(f"done in {time.monotonic() - started:.1f}s")
    return {
        "version": version,
        "metrics": metrics,
        "promoted": promote,
        "beats_baseline": good,
        "registry": registry.root,
    }


def _short(metrics: dict[str, Any]) -> str:
    from model.registry import format_metrics

    return format_metrics(metrics, limit=6)


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
        description="Train the first model from simulated history and publish it.",
    )
    parser.add_argument("--config", required=True, help="dataset config (traffic only)")
    parser.add_argument(
        "--registry",
        default=os.environ.get("MODEL_REGISTRY", ".local/registry"),
        help="registry root, a directory or gs:// path (default: $MODEL_REGISTRY "
        "or .local/registry)",
    )
    parser.add_argument("--events", type=int, default=20000, help="readings (default 20000)")
    parser.add_argument("--seed", type=int, default=7, help="simulator and model seed (7)")
    parser.add_argument(
        "--end-time",
        type=_time,
        default=None,
        help="end of the history, epoch seconds or ISO-8601 (default: now)",
    )
    parser.add_argument("--drift", action="store_true", help="generate post-drift history")
    parser.add_argument(
        "--promote",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="make the new version current (default: yes)",
    )
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.epochs <= 0:
            raise BootstrapError(f"--epochs must be positive, got {args.epochs}")
        config = load_config(args.config)
        if config.name not in SUPPORTED_DATASETS:
            raise BootstrapError(
                f"dataset {config.name!r} ({args.config}) has no simulator; "
                f"trainer.bootstrap supports only: {', '.join(SUPPORTED_DATASETS)}"
            )
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
        result = bootstrap(
            config,
            registry,
            n_events=args.events,
            end_time=time.time() if args.end_time is None else args.end_time,
            seed=args.seed,
            drift=args.drift,
            promote=args.promote,
            rate=args.rate,
            n_sensors=args.sensors,
            day_seconds=args.day_seconds,
            day_origin=args.day_origin,
            epochs=args.epochs,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
