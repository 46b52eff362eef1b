"""River's concept-drift streams as dataset files, and river's online learners on them.

Usage::

    python -m benchmarks.drift_streams [--rows 20000] [--seed 42] \\
        [--out-dir .local/drift] [--configs-dir benchmarks/configs] \\
        [--results benchmarks/results/drift_river.json] [--streams sea,agrawal,hyperplane] \\
        [--learners hat,arf] [--generate-only]

Three synthetic binary-classification streams from ``river.datasets.synth``
(river ships them as code, so nothing is downloaded):

* ``sea``: ``SEA(variant=0)`` then ``SEA(variant=2)`` (another threshold on
  ``x0 + x1``), joined by ``ConceptDriftStream`` at the middle of the stream
  with ``width=100`` (``rows // 150`` beyond 15,000 rows: river's sigmoid
  overflows for a narrower one): a near-abrupt drift. 10% label noise.
* ``agrawal``: ``Agrawal(classification_function=0)`` then function 2
  (loan-approval rules over salary, age, ...), ``ConceptDriftStream`` at the
  middle with ``width=2000``: a gradual drift.
* ``hyperplane``: ``Hyperplane(n_features=10, n_drift_features=5,
  mag_change=0.001)``: a rotating hyperplane, incremental drift all along
  (river's generator drifts by itself; ``ConceptDriftStream`` is not needed).

Each stream is written to ``<out-dir>/drift_<name>.jsonl`` with a synthesized
key (``source_id``, 20 round-robin sources) and event time (``event_time``,
ISO-8601, one row per second from 2024-01-01T00:00:00Z), and a dataset config
``<configs-dir>/drift_<name>.yaml`` that ``dataset.config.load_config`` loads
(inline labels; retraining every 1,000 new rows on the last 5,000). The files
replay and backtest like any user's data::

    python -m pipelines.main backtest --config benchmarks/configs/drift_sea.yaml \\
        --data .local/drift/drift_sea.jsonl --out .local/backtest/sea
    ./run_local.sh --config benchmarks/configs/drift_sea.yaml \\
        --replay .local/drift/drift_sea.jsonl --bootstrap-rows 2000 --duration 300

Then river's online learners run prequentially (test-then-train: each row is
predicted, then learned) on the rows read back from those files:
Hoeffding Adaptive Tree (``tree.HoeffdingAdaptiveTreeClassifier``) and
Adaptive Random Forest (``forest.ARFClassifier``, 10 trees), with the
``no_change`` (previous label of the same key) and ``majority`` (running
majority class) baselines. ``accuracy`` counts the rows after the first 10%
(the backtest's warm-up, so the figures compare), also split before/after the
drift point (and over the first 2,000 rows after it: the recovery);
``kappa_temporal`` is against ``no_change``. Results go to
``--results`` as JSON.
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

logger = logging.getLogger(__name__)

KEY_FIELD = "source_id"
TIME_FIELD = "event_time"
LABEL_FIELD = "label"
N_SOURCES = 20
START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
WARMUP_FRACTION = 0.1
RECOVERY_ROWS = 2000  # rows right after the drift point: how fast a learner recovers


@dataclasses.dataclass(frozen=True)
class StreamSpec:
    """One drift stream: how river builds it and the feature types of its rows."""

    name: str
    description: str
    build: Callable[[int, int], Any]  # (rows, seed) -> river dataset
    features: Mapping[str, Mapping[str, Any]]  # config feature specs, by row field name
    rename: Callable[[Any], str]  # river's feature key -> row field name
    drift_at: Callable[[int], int | None]  # rows -> index the drift is centred on


def _sea(rows: int, seed: int):
    from river.datasets import synth

    return synth.ConceptDriftStream(
        stream=synth.SEA(variant=0, noise=0.1, seed=seed),
        drift_stream=synth.SEA(variant=2, noise=0.1, seed=seed + 1),
        position=rows // 2,
        # near-abrupt; river's sigmoid overflows math.exp when rows / width is too large
        width=max(100, rows // 150),
        seed=seed,
    )


def _agrawal(rows: int, seed: int):
    from river.datasets import synth

    return synth.ConceptDriftStream(
        stream=synth.Agrawal(classification_function=0, seed=seed),
        drift_stream=synth.Agrawal(classification_function=2, seed=seed + 1),
        position=rows // 2,
        width=2000,
        seed=seed,
    )


def _hyperplane(rows: int, seed: int):
    from river.datasets import synth

    return synth.Hyperplane(
        seed=seed, n_features=10, n_drift_features=5, mag_change=0.001, noise_percentage=0.05
    )


_AGRAWAL_FEATURES = {  # river's generator ranges (the config's min/max also scale features)
    "salary": {"type": "float", "min": 20000, "max": 150000},
    "commission": {"type": "float", "min": 0, "max": 85000},
    "age": {"type": "int", "min": 20, "max": 80},
    "elevel": {"type": "int", "min": 0, "max": 4},
    "car": {"type": "int", "min": 1, "max": 20},
    "zipcode": {"type": "int", "min": 0, "max": 8},
    "hvalue": {"type": "float", "min": 0, "max": 1200000},
    "hyears": {"type": "int", "min": 1, "max": 30},
    "loan": {"type": "float", "min": 0, "max": 500000},
}

STREAMS: dict[str, StreamSpec] = {
    "sea": StreamSpec(
        "sea",
        "river SEA concepts 0 -> 2, abrupt drift at the middle, 10% label noise",
        _sea,
        {f"x{i}": {"type": "float", "min": 0, "max": 10} for i in range(3)},
        lambda k: f"x{k}",
        lambda rows: rows // 2,
    ),
    "agrawal": StreamSpec(
        "agrawal",
        "river Agrawal functions 0 -> 2, gradual drift (width 2000) at the middle",
        _agrawal,
        _AGRAWAL_FEATURES,
        str,
        lambda rows: rows // 2,
    ),
    "hyperplane": StreamSpec(
        "hyperplane",
        "river rotating Hyperplane, 10 features (5 drifting, 0.001 per row), 5% noise",
        _hyperplane,
        {f"x{i}": {"type": "float", "min": 0, "max": 1} for i in range(10)},
        lambda k: f"x{k}",
        lambda rows: None,
    ),
}


def stream_rows(spec: StreamSpec, rows: int, seed: int) -> Iterator[dict[str, Any]]:
    """The stream's first ``rows`` rows with a synthesized key and event time."""
    for i, (x, y) in enumerate(spec.build(rows, seed).take(rows)):
        row: dict[str, Any] = {
            KEY_FIELD: f"s{i % N_SOURCES:02d}",
            TIME_FIELD: (START + dt.timedelta(seconds=i)).isoformat().replace("+00:00", "Z"),
        }
        for key, value in x.items():
            name = spec.rename(key)
            ftype = spec.features[name]["type"]
            row[name] = int(value) if ftype == "int" else round(float(value), 6)
        row[LABEL_FIELD] = int(y)
        yield row


def config_dict(spec: StreamSpec) -> dict[str, Any]:
    """The dataset config describing ``spec``'s rows."""
    return {
        "name": f"drift_{spec.name}",
        "description": f"{spec.description} (benchmarks/drift_streams.py)",
        "key_field": KEY_FIELD,
        "event_time": {"field": TIME_FIELD, "format": "iso8601", "attribute": TIME_FIELD},
        "id_attribute": "message_id",
        "features": {name: dict(f) for name, f in spec.features.items()},
        "label": {
            "field": LABEL_FIELD,
            "type": "int",
            "task": "binary_classification",
            "source": "inline",
        },
        "windows": {
            "allowed_lateness_seconds": 120,
            "specs": [{"name": "fixed_5m", "kind": "fixed", "size_seconds": 300}],
        },
        "retraining": {
            "min_new_examples": 1000,
            "min_interval_seconds": 60,
            "training_window_rows": 5000,
            "validation_fraction": 0.2,
            "max_quality_drop": 0.02,
        },
    }


def write_stream(
    spec: StreamSpec, rows: int, seed: int, out_dir: str, configs_dir: str
) -> tuple[str, str]:
    """Writes the stream's JSONL file and its config; returns their paths."""
    import yaml

    from dataset.config import load_config

    os.makedirs(out_dir, exist_ok=True)
    os.makedirs(configs_dir, exist_ok=True)
    data_path = os.path.join(out_dir, f"drift_{spec.name}.jsonl")
    with open(data_path, "w", encoding="utf-8") as f:
        for row in stream_rows(spec, rows, seed):
            f.write(json.dumps(row, separators=(",", ":")) + "\n")
    config_path = os.path.join(configs_dir, f"drift_{spec.name}.yaml")
    header = (
        f"# Generated by: python -m benchmarks.drift_streams (stream {spec.name!r}).\n"
        f"# {spec.description}.\n"
    )
    with open(config_path, "w", encoding="utf-8") as f:
        f.write(header + yaml.safe_dump(config_dict(spec), sort_keys=False))
    load_config(config_path)  # must load like any user's config
    return data_path, config_path


def read_rows(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _learners(seed: int) -> dict[str, Callable[[], Any]]:
    from river import forest, tree

    return {
        "hat": lambda: tree.HoeffdingAdaptiveTreeClassifier(seed=seed),
        "arf": lambda: forest.ARFClassifier(n_models=10, seed=seed),
    }


LEARNER_NAMES = {"hat": "Hoeffding Adaptive Tree", "arf": "Adaptive Random Forest (10 trees)"}


def _scores(
    hits: Sequence[bool], warmup: int, drift_at: int | None, no_change_acc: float | None
) -> dict[str, Any]:
    scored = hits[warmup:]
    acc = sum(scored) / len(scored) if scored else None
    out: dict[str, Any] = {"accuracy": acc, "rows_scored": len(scored)}
    if drift_at is not None and warmup < drift_at < len(hits):
        before, after = hits[warmup:drift_at], hits[drift_at:]
        recovery = hits[drift_at : drift_at + RECOVERY_ROWS]
        out["accuracy_before_drift"] = sum(before) / len(before)
        out["accuracy_after_drift"] = sum(after) / len(after)
        out[f"accuracy_first_{RECOVERY_ROWS}_after_drift"] = sum(recovery) / len(recovery)
    if acc is not None and no_change_acc is not None and no_change_acc < 1:
        out["kappa_temporal"] = (acc - no_change_acc) / (1 - no_change_acc)
    return out


def baselines(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[bool]]:
    """Prequential hits of ``no_change`` (previous label of the key) and ``majority``."""
    last: dict[str, int] = {}
    counts = {0: 0, 1: 0}
    no_change, majority = [], []
    for row in rows:
        y = row[LABEL_FIELD]
        no_change.append(last.get(row[KEY_FIELD], 0) == y)
        majority.append((1 if counts[1] > counts[0] else 0) == y)
        last[row[KEY_FIELD]] = y
        counts[y] += 1
    return {"no_change": no_change, "majority": majority}


def prequential(model: Any, rows: Sequence[Mapping[str, Any]], features: Sequence[str]):
    """Test-then-train: returns (hits, seconds)."""
    hits = []
    started = time.perf_counter()
    for row in rows:
        x = {name: row[name] for name in features}
        y = row[LABEL_FIELD]
        hits.append(model.predict_one(x) == y)
        model.learn_one(x, y)
    return hits, time.perf_counter() - started


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "generated_by": "python -m benchmarks.drift_streams " + " ".join(sys.argv[1:]),
        "rows": args.rows,
        "seed": args.seed,
        "warmup_fraction": WARMUP_FRACTION,
        "streams": {},
    }
    for name in args.streams:
        spec = STREAMS[name]
        data_path, config_path = write_stream(
            spec, args.rows, args.seed, args.out_dir, args.configs_dir
        )
        logger.info("wrote %s and %s", data_path, config_path)
        if args.generate_only:
            continue
        rows = read_rows(data_path)
        warmup = int(len(rows) * WARMUP_FRACTION)
        drift_at = spec.drift_at(len(rows))
        entry: dict[str, Any] = {
            "data": data_path,
            "config": config_path,
            "description": spec.description,
            "drift_at_row": drift_at,
            "positive_rate": sum(r[LABEL_FIELD] for r in rows) / len(rows),
        }
        base = baselines(rows)
        nc = _scores(base["no_change"], warmup, drift_at, None)["accuracy"]
        entry["baselines"] = {k: _scores(h, warmup, drift_at, None) for k, h in base.items()}
        entry["learners"] = {}
        factories = _learners(args.seed)
        for learner in args.learners:
            hits, seconds = prequential(factories[learner](), rows, list(spec.features))
            scores = _scores(hits, warmup, drift_at, nc)
            scores.update(name=LEARNER_NAMES[learner], seconds=round(seconds, 1))
            entry["learners"][learner] = scores
            logger.info(
                "%s / %s: accuracy %.4f (%.0f rows/s)",
                name,
                learner,
                scores["accuracy"],
                len(rows) / seconds,
            )
        results["streams"][name] = entry
    return results


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.drift_streams",
        description="Generate river's drift streams as dataset files; score river's learners.",
    )
    p.add_argument("--rows", type=int, default=20000, help="rows per stream (default 20000)")
    p.add_argument("--seed", type=int, default=42, help="generator and learner seed (42)")
    p.add_argument("--out-dir", default=".local/drift", help="data files (.local/drift)")
    p.add_argument("--configs-dir", default="benchmarks/configs", help="dataset configs")
    p.add_argument(
        "--results", default="benchmarks/results/drift_river.json", help="results JSON file"
    )
    p.add_argument(
        "--streams",
        type=lambda s: s.split(","),
        default=list(STREAMS),
        help=f"comma-separated subset of {','.join(STREAMS)}",
    )
    p.add_argument(
        "--learners", type=lambda s: s.split(","), default=["hat", "arf"], help="hat,arf"
    )
    p.add_argument(
        "--generate-only", action="store_true", help="write files and configs; no learners"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    unknown = [s for s in args.streams if s not in STREAMS] + [
        s for s in args.learners if s not in LEARNER_NAMES
    ]
    if unknown or args.rows < 100:
        print(f"error: unknown streams/learners {unknown} or --rows < 100", file=sys.stderr)
        return 2
    results = run(args)
    if not args.generate_only:
        os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
        with open(args.results, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
        print(json.dumps(results["streams"], indent=1, default=str)[:4000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
