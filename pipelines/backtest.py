"""``python -m pipelines.main backtest``: does continuous training pay on this history?

Usage::

    python -m pipelines.main backtest --config CONFIG --data FILE --out DIR \\
        [--policy NAME:KEY=VALUE,...]... [--grid] [--seed N] [--warmup 0.1] \\
        [--training-delay SECONDS] [--epochs N] [--min-rows N]

Replays ``FILE`` (JSON Lines or CSV, described by ``CONFIG``) in event-time
order through the live loop's validation, labeling, trigger policy, trainer
and gates (``trainer.backtest``), prequentially: each row is predicted by the
model serving at its event time, then trains later models once its label lands.

Policies: ``configured`` (the config's ``retraining`` section) always comes
first; ``--policy NAME:KEY=VALUE,...`` adds one with those ``retraining``
settings changed (validated like the config); ``--grid`` adds
``min_new_examples`` x ``training_window_rows`` at half, the configured and
twice the configured values.

Writes ``DIR/results.json`` (``rows``, ``warmup_rows``, ``invalid_rows``,
``policies``, ``baselines``: ``static``, ``no_change``, ``majority``) and
``DIR/quality.png`` (quality over event time per policy, retrains marked).
Progress goes to stderr. Exit codes: 0 done, 2 bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import yaml

from dataset.config import DatasetConfig, RetrainingPolicy, config_from_dict, read_config_text

_LOG = logging.getLogger(__name__)
PLOT_BINS = 60
DEFAULT_DELAY_SECONDS = 60.0


def _positive(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
    return number


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipelines.main backtest",
        description="Prequential backtest of retraining policies on a history file.",
    )
    p.add_argument("--config", required=True, help="dataset config (YAML/JSON)")
    p.add_argument("--data", required=True, help="history: .jsonl/.ndjson/.json or .csv")
    p.add_argument("--out", required=True, help="output directory (results.json, quality.png)")
    p.add_argument(
        "--policy",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE,...",
        help="another policy: the configured one with these retraining settings changed "
        "(repeatable), e.g. often:min_new_examples=500,training_window_rows=5000",
    )
    p.add_argument(
        "--grid",
        action="store_true",
        help="add min_new_examples x training_window_rows at 0.5x, 1x, 2x the configured values",
    )
    p.add_argument("--seed", type=int, default=0, help="model seed (default 0)")
    p.add_argument(
        "--warmup", type=float, default=0.1, help="share of rows that trains the first model (0.1)"
    )
    p.add_argument(
        "--training-delay",
        type=float,
        default=DEFAULT_DELAY_SECONDS,
        help=f"event seconds from a trigger to its model serving ({DEFAULT_DELAY_SECONDS:g})",
    )
    p.add_argument("--epochs", type=int, default=8, help="trainer.task --epochs (default 8)")
    p.add_argument("--min-rows", type=int, default=None, help="trainer.task --min-rows")
    p.add_argument("--no-plot", action="store_true", help="skip quality.png")
    return p


def _raw_config(path: str) -> dict[str, Any]:
    text = read_config_text(path)
    try:
        raw = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid YAML/JSON: {e}") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return raw


def _value(text: str) -> Any:
    parsed = yaml.safe_load(text)
    return None if isinstance(parsed, str) and parsed.lower() == "none" else parsed


def policy_from_spec(raw: dict[str, Any], spec: str, source: str) -> tuple[str, RetrainingPolicy]:
    """``NAME:KEY=VALUE,...`` -> (name, policy), validated by the config loader.

    Raises:
        ValueError: a malformed spec or an invalid setting.
    """
    name, sep, settings = spec.partition(":")
    if not sep or not name or not settings:
        raise ValueError(f"--policy {spec!r}: expected NAME:KEY=VALUE[,KEY=VALUE...]")
    overrides = {}
    for item in settings.split(","):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"--policy {spec!r}: {item!r} is not KEY=VALUE")
        overrides[key.strip()] = _value(value.strip())
    return name, with_retraining(raw, overrides, f"{source} (--policy {name})").retraining


def with_retraining(raw: dict[str, Any], overrides: dict[str, Any], source: str) -> DatasetConfig:
    """The config with ``retraining`` settings replaced, validated by ``config_from_dict``."""
    changed = dict(raw)
    changed["retraining"] = {**(raw.get("retraining") or {}), **overrides}
    return config_from_dict(changed, source=source)


def grid_policies(raw: dict[str, Any], config: DatasetConfig) -> list[tuple[str, RetrainingPolicy]]:
    """``min_new_examples`` x ``training_window_rows`` at 0.5x, 1x and 2x (without 1x-1x)."""
    base = config.retraining
    out = []
    for m in sorted({max(1, base.min_new_examples // 2), base.min_new_examples,
                     base.min_new_examples * 2}):  # fmt: skip
        for w in sorted({max(2, base.training_window_rows // 2), base.training_window_rows,
                         base.training_window_rows * 2}):  # fmt: skip
            if m == base.min_new_examples and w == base.training_window_rows:
                continue
            overrides = {"min_new_examples": m, "training_window_rows": w}
            out.append((f"grid_m{m}_w{w}", with_retraining(raw, overrides, "grid").retraining))
    return out


def run_backtest(args: argparse.Namespace) -> dict[str, Any]:
    """Runs every policy and the baselines; writes results.json (and quality.png)."""
    from trainer import backtest as bt
    from trainer.backtest_replay import load_replay

    started = time.monotonic()
    raw = _raw_config(args.config)
    config = config_from_dict(raw, source=args.config)
    policies = [("configured", config.retraining)]
    policies += [policy_from_spec(raw, spec, args.config) for spec in args.policy]
    if args.grid:
        policies += grid_policies(raw, config)
    names = [n for n, _ in policies]
    if len(set(names)) != len(names):
        raise ValueError(f"policy names must be unique: {names}")

    _determinism(args.seed)
    replay = load_replay(args.data, config, args.warmup)
    print(
        f"[backtest] {replay.rows} rows ({replay.warmup_rows} warm-up), "
        f"{replay.invalid_rows} invalid, {len(replay.scored_indexes())} to score; "
        f"{len(policies)} policies",
        file=sys.stderr,
    )
    opts = bt.BacktestOptions(
        training_delay_seconds=args.training_delay,
        seed=args.seed,
        epochs=args.epochs,
        **({"min_rows": args.min_rows} if args.min_rows is not None else {}),
    )
    classification = config.label.task == "binary_classification"
    first = bt.first_model(config, replay, opts)
    base = bt.baselines(replay, classification)
    reference = base["no_change"]
    idx = replay.scored_indexes()
    static = _static_predictions(replay, first)
    runs = []
    for name, policy in policies:
        runs.append(bt.run_policy(name, config, policy, replay, first, opts, bt.stderr_progress))
    labels = replay.labels[idx]
    results: dict[str, Any] = {
        "config": args.config,
        "data": args.data,
        "task": config.label.task,
        "label_source": config.label.source,
        "rows": replay.rows,
        "warmup_rows": replay.warmup_rows,
        "invalid_rows": replay.invalid_rows,
        "invalid_reasons": replay.invalid_reasons,
        "invalid_examples": replay.invalid_examples,
        "label_rows": replay.label_rows,
        "seed": args.seed,
        "training_delay_seconds": args.training_delay,
        "policies": [bt.policy_summary(r, replay, reference, classification) for r in runs],
        "baselines": {
            "static": bt.score(labels, static[idx], reference[idx], classification),
            "no_change": bt.score(
                labels, reference[idx], reference[idx], classification, probabilistic=False
            ),
            "majority": bt.score(
                labels, base["majority"][idx], reference[idx], classification, probabilistic=False
            ),
        },
        "first_event_time": _iso(replay.times[0]),
        "last_event_time": _iso(replay.times[-1]),
    }
    if not classification:
        for entry in results["baselines"].values():
            entry.pop("accuracy", None)
    os.makedirs(args.out, exist_ok=True)
    if not args.no_plot:
        plot(os.path.join(args.out, "quality.png"), replay, runs, static, reference, config)
    results["elapsed_seconds"] = round(time.monotonic() - started, 1)
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, default=_json_default)
        f.write("\n")
    return results


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(float(seconds), dt.UTC).isoformat().replace("+00:00", "Z")


def _determinism(seed: int) -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def _static_predictions(replay, first) -> Any:
    import numpy as np

    out = np.full(replay.rows, np.nan)
    rest = slice(replay.warmup_rows, replay.rows)
    out[rest] = np.ravel(first.predict(replay.x[rest]))
    return out


def plot(path: str, replay, runs, static, reference, config: DatasetConfig) -> None:
    """Quality over event time per policy (and static / no_change), retrains marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from trainer.backtest import quality_series

    classification = config.label.task == "binary_classification"
    idx = replay.scored_indexes()
    t0 = replay.times[0]
    times = (replay.times[idx] - t0) / 60.0
    labels = replay.labels[idx]
    fig, ax = plt.subplots(figsize=(11, 5.5))
    curves = [(r.name, r.predictions[idx], r) for r in runs]
    curves += [("static", static[idx], None), ("no_change", reference[idx], None)]
    for name, predictions, run in curves:
        x, y = quality_series(times, labels, predictions, classification, PLOT_BINS)
        style = "--" if run is None else "-"
        (line,) = ax.plot(x, y, style, label=name, linewidth=1.4 if run else 1.0)
        if run is None:
            continue
        for what, marker in ((True, "^"), (False, "x")):
            at = [
                (r["serves_from"] - t0) / 60.0
                for r in run.runs
                if r["promoted"] is what and r["serves_from"] <= replay.times[-1]
            ]
            if at:
                ys = np.interp(at, x, y) if len(x) else np.zeros(len(at))
                ax.plot(at, ys, marker, color=line.get_color(), markersize=6, linestyle="none")
    ax.axvline((replay.warmup_end - t0) / 60.0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("event time since the first row (minutes); ^ promotion, x rejection")
    ax.set_ylabel("accuracy per bin" if classification else "MAE per bin")
    ax.set_title(f"{config.name}: prequential quality ({len(idx)} scored rows)")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (``python -m pipelines.main backtest ...``); returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.epochs <= 0:
        print("error: --epochs must be positive", file=sys.stderr)
        return 2
    if args.training_delay < 0:
        print("error: --training-delay must be >= 0", file=sys.stderr)
        return 2
    try:
        results = run_backtest(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary_table(results), file=sys.stderr)
    print(os.path.join(args.out, "results.json"))
    return 0


def summary_table(results: dict[str, Any]) -> str:
    """The policies and baselines as a small text table."""
    metric = "accuracy" if results["task"] == "binary_classification" else "mae"
    lines = [f"{'policy':<28} {metric:>9} {'kappa_t':>8} {'retrains':>8} {'promoted':>8}"]
    for p in results["policies"]:
        kappa = p.get("kappa_temporal")
        lines.append(
            f"{p['name']:<28} {p.get(metric, float('nan')):>9.4f} "
            f"{kappa if kappa is None else round(kappa, 4)!s:>8} "
            f"{p['retrains']:>8} {p['promotions']:>8}"
        )
    for name, b in results["baselines"].items():
        kappa = b.get("kappa_temporal")
        lines.append(
            f"{name:<28} {b.get(metric, float('nan')):>9.4f} "
            f"{kappa if kappa is None else round(kappa, 4)!s:>8}"
        )
    return "\n".join(lines)
