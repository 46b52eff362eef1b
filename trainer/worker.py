"""A warm trainer: a process that has imported TensorFlow and waits for one job.

Started ahead of time by the local backend (``LocalProcessBackend(warm=True)``,
``python -m trainer.launcher --warm-trainer``)::

    python -m trainer.worker --marker TOKEN [--config CONFIG]

It imports TensorFlow, Keras and the trainer's modules (about 10 s on the
2-core development machine, the largest part of a cold trainer's start-up);
with ``--config`` it also trains, saves, exports and reloads a throw-away
model of that config's shape on zeros (``warm_up``), so the run's first
Keras fit, predict and SavedModel export do not pay TensorFlow's one-time
set-up either (several seconds under load); then it reads **one** job from stdin, a JSON line
``{"argv": [trainer.task arguments], "log_path": PATH}``; sends its own
output to ``PATH`` (appended) and runs ``trainer.task.main(argv)`` with the
time it got the job as the run's origin; exits with its status. One job per
process: the backend starts a fresh worker for the next run, so no state
(TensorFlow graphs, Keras sessions, memory) carries over from one run to the
next. If stdin closes without a job (the launcher went away), it exits 0
having done nothing. ``TOKEN`` is only there to be found in its command line
(a restarted launcher re-attaches by it).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

READY_LINE = "[worker] ready"


def preload() -> None:
    """Imports what every run needs, before there is a run."""
    import keras  # noqa: F401
    import tensorflow  # noqa: F401

    import dataset.resources  # noqa: F401
    import model.features  # noqa: F401
    import model.keras_model  # noqa: F401
    import model.registry  # noqa: F401
    import trainer.gates  # noqa: F401
    import trainer.metrics  # noqa: F401
    import trainer.task  # noqa: F401
    import trainer.validation  # noqa: F401


def job_waiting(stream: IO[str]) -> bool:
    """Whether a job line can be read from ``stream`` now (``select``; False if it cannot tell)."""
    import select

    try:
        return bool(select.select([stream], [], [], 0)[0])
    except (OSError, ValueError, io.UnsupportedOperation):
        return False


def warm_up(config_path: str, stop: Callable[[], bool] = lambda: False) -> int:
    """Runs each TensorFlow code path of a run once on a throw-away model of the config's shape.

    Build, one epoch of fit with validation, predict, ``model.keras`` save and
    load, SavedModel export and load: what the run's train, evaluate, publish
    and gates phases do, minus the data. Nothing is kept; the run builds its
    own model (``build_model`` re-seeds), so its results do not change.
    ``stop`` is asked before each step: a job that arrived meanwhile must not
    wait for the rest. Returns how many of the 4 steps ran.
    """
    import tempfile

    import keras
    import numpy as np
    import tensorflow as tf

    from dataset.config import load_config
    from model.export import export_saved_model
    from model.features import feature_dim
    from model.keras_model import STANDARDIZE_LAYER, build_model

    config = load_config(config_path)
    x = np.zeros((64, feature_dim(config)), dtype="float32")
    y = np.zeros((64,), dtype="float32")
    model = build_model(config)
    tmp = tempfile.mkdtemp(prefix="warm-up-")

    def train() -> None:
        for layer in model.layers:
            if layer.name == STANDARDIZE_LAYER:
                layer.adapt(x)
        model.fit(x, y, epochs=1, batch_size=16, validation_data=(x[:16], y[:16]), verbose=0)
        model.predict(x, verbose=0)

    def export() -> None:
        export_saved_model(model, f"{tmp}/saved_model", config)
        tf.saved_model.load(f"{tmp}/saved_model")

    steps = [
        train,
        lambda: model.save(f"{tmp}/model.keras"),
        lambda: keras.models.load_model(f"{tmp}/model.keras").predict(x, verbose=0),
        export,
    ]
    done = 0
    try:
        for step in steps:
            if stop():
                break
            step()
            done += 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        keras.backend.clear_session()
    return done


def parse_job(line: str) -> dict[str, Any]:
    """The job line: ``{"argv": [str, ...], "log_path": str}``.

    Raises:
        ValueError: if it is not that.
    """
    job = json.loads(line)
    if (
        not isinstance(job, dict)
        or not isinstance(job.get("argv"), list)
        or not all(isinstance(a, str) for a in job["argv"])
        or not isinstance(job.get("log_path"), str)
    ):
        raise ValueError(f"expected {{'argv': [str], 'log_path': str}}, got {line[:200]!r}")
    return job


def _redirect_output(log_path: str) -> None:
    """Points this process's stdout and stderr (the file descriptors) at ``log_path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def serve_one(stdin: IO[str]) -> int:
    """Waits for one job on ``stdin`` and runs it; returns the trainer's exit status."""
    line = stdin.readline()
    received = time.time()
    if not line.strip():
        print("[worker] no job: stdin closed", flush=True)
        return 0
    job = parse_job(line)
    _redirect_output(job["log_path"])
    print(f"[worker] pid {os.getpid()} got the job (warm: TensorFlow already imported)", flush=True)
    from trainer import task

    return task.main(job["argv"], started_at=received)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.worker", description=__doc__)
    parser.add_argument("--marker", default="", help="a token to find this process by")
    parser.add_argument("--config", help="warm up on a throw-away model of this config's shape")
    args = parser.parse_args(argv)
    started = time.monotonic()
    preload()
    if args.config:
        try:
            steps = warm_up(args.config, stop=lambda: job_waiting(sys.stdin))
            print(f"[worker] warmed up ({steps} of 4 steps)", flush=True)
        except Exception as e:  # noqa: BLE001 - a cold first fit is a fine fallback
            print(f"[worker] warm-up skipped: {type(e).__name__}: {e}", flush=True)
    print(f"{READY_LINE} in {time.monotonic() - started:.1f}s", flush=True)
    return serve_one(sys.stdin)


if __name__ == "__main__":
    sys.exit(main())
