"""Benchmark: the trainer's time and peak memory on 10k, 100k and 1M training rows.

    python -m benchmarks.trainer_scale [--rows 10000 100000 1000000] [--epochs 2]
        [--sources file bigquery] [--bigquery-max-rows 100000] [--timeout 900]

What it does:

1. Generates simulated traffic history (``trainer.bootstrap.generate_history``,
   ``--rate`` readings/s, 300 sensors) and turns it into the training-table
   rows the streaming pipeline would write (``trainer.bootstrap.training_rows``,
   the pipeline's own validation and row building), in chunks, into one JSON
   Lines file per size (the newest ``rows`` rows of one history).
2. For each size and source, runs ONE training run in a fresh subprocess
   (``trainer.task.run_task``: the real code path, with a temporary registry
   and a ``training_window_rows`` set to the size in a config copy), so the
   peak RSS is that run's alone (``ru_maxrss`` of the child). The child wraps
   the trainer's own functions with timers (reading the window, validation,
   split, feature encoding, Keras ``fit``) and reads the trainer's own
   ``timings_s`` (read, validate, train, evaluate, publish/export, gates, total).
3. Sources: ``file`` reads the JSON Lines file (``--training-file``,
   ``trainer.data.read_training_file``) for every size; ``bigquery`` loads the
   rows into the local BigQuery emulator (bqemulator, DuckDB) and reads them
   with ``trainer.data.read_training_window`` (the REST query path: the
   emulator has no Storage Read of query results), for sizes up to
   ``--bigquery-max-rows`` (loading the emulator takes ~1 s per 10-15k rows).
   Against real BigQuery the same read goes through the Storage Read API.

The parent watches each child's RSS and kills it above ``--max-rss-mib``
(default 5,632: the machine is shared). Every measurement records the 1-minute
load average before and after. Results: printed, and written to
``benchmarks/results/trainer_scale.json``; ``measure(...)`` returns the same
dict (``trainer_rows``: one entry per run) for ``benchmarks.run``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.pipeline_throughput import load1

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "trainer_scale.json"
CONFIG = ROOT / "configs" / "traffic.yaml"
DEFAULT_ROWS = (10_000, 100_000, 1_000_000)
DEFAULT_EPOCHS = 2
CHUNK = 100_000
END_TIME = 1_790_000_000.0  # a fixed end of the simulated history (2026-09-21)
RATE = 10.0
PROJECT = "bench-project"
DATASET = "trainer_scale"
MAX_RSS_MIB = 5632


# --------------------------------------------------------------------------- data


def write_history(path: Path, rows: int, config_path: Path = CONFIG) -> int:
    """Writes ``rows`` simulated training rows (oldest first) to ``path``, in chunks.

    The history ends at ``END_TIME``; each chunk of ``CHUNK`` readings continues
    the previous one in time, so the file is one continuous history.
    """
    from dataset.config import load_config
    from trainer.bootstrap import generate_history, training_rows

    config = load_config(str(config_path))
    first = END_TIME - rows / RATE
    chunks = -(-rows // CHUNK)  # equal chunks: none below the simulator's minimum
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        for k in range(chunks):
            n = rows // chunks + (k < rows % chunks)
            end = first + (written + n) / RATE
            readings, _ = generate_history(config, n, end, rate=RATE, seed=7)
            for row in training_rows(config, readings, end + 60.0, f"bench{k}"):
                f.write(json.dumps(row, default=_rfc3339) + "\n")
            written += n
    return written


def _rfc3339(value: Any) -> str:
    from dataset.times import rfc3339

    return rfc3339(value)


def tail_file(source: Path, out: Path, rows: int) -> None:
    """Writes the last ``rows`` lines of ``source`` to ``out`` (the newest rows)."""
    with open(source, "rb") as f:
        total = sum(1 for _ in f)
    skip = total - rows
    with open(source, "rb") as f, open(out, "wb") as g:
        for i, line in enumerate(f):
            if i >= skip:
                g.write(line)


def config_copy(tmp: Path, rows: int) -> Path:
    """The traffic config with ``training_window_rows: rows`` (what a run reads)."""
    import yaml

    with open(CONFIG, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    doc["retraining"]["training_window_rows"] = rows
    out = tmp / f"traffic-{rows}.yaml"
    with open(out, "w", encoding="utf-8") as f:
        yaml.safe_dump(doc, f)
    return out


# --------------------------------------------------------------------------- BigQuery


def load_emulator(client, config, path: Path) -> dict[str, Any]:
    """Loads a training file into the emulator's training table; returns how long it took."""
    from google.cloud import bigquery

    from dataset.resources import ensure_bigquery_tables

    ensure_bigquery_tables(PROJECT, DATASET, config, client=client)
    table = f"{PROJECT}.{DATASET}.{config.tables.training_examples}"
    client.query(f"DELETE FROM `{table}` WHERE TRUE").result()
    t = time.monotonic()
    job_config = bigquery.LoadJobConfig(
        source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON,
        write_disposition=bigquery.WriteDisposition.WRITE_APPEND,
    )
    with open(path, "rb") as f:
        client.load_table_from_file(f, table, job_config=job_config).result()
    loaded = next(iter(client.query(f"SELECT COUNT(*) AS n FROM `{table}`").result())).n
    return {"load_s": round(time.monotonic() - t, 2), "rows_loaded": int(loaded)}


# --------------------------------------------------------------------------- child


class _Timers:
    """Wraps functions (module attributes) with cumulative timers and RSS marks."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.rss_after: dict[str, float] = {}

    def wrap(self, module, attribute: str, name: str) -> None:
        original = getattr(module, attribute)

        def timed(*args, **kwargs):
            t = time.monotonic()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.monotonic() - t
                self.rss_after[name] = _peak_rss_mib()

        setattr(module, attribute, timed)


def _peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """One training run (in this fresh process); returns its timings and peak RSS."""
    started = time.monotonic()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import model.features as features
    import model.keras_model as keras_model
    from dataset.config import load_config
    from model.registry import ModelRegistry
    from trainer import data as data_lib
    from trainer import task
    from trainer import validation as validation_lib
    from trainer.bootstrap import RunLog

    imported_s = time.monotonic() - started
    timers = _Timers()
    timers.wrap(data_lib, "read_training_file", "read")
    timers.wrap(data_lib, "read_training_window", "read")
    timers.wrap(validation_lib, "validate", "validate")
    timers.wrap(data_lib, "split_by_time", "split")
    timers.wrap(features, "encode_batch", "encode")
    timers.wrap(features, "label_array", "encode")
    timers.wrap(keras_model, "fit", "fit")
    config = load_config(spec["config"])
    if spec["source"] == "bigquery":
        from dataset.resources import bigquery_client

        client = bigquery_client(PROJECT)
    else:
        client = RunLog()
    opts = task.TaskOptions(
        config_path=spec["config"],
        project=PROJECT,
        bq_dataset=DATASET,
        registry=spec["registry"],
        run_id=f"scale-{spec['rows']}-{spec['source']}-{os.getpid()}",
        trigger_id="trainer-scale",
        epochs=spec["epochs"],
        training_file=spec["file"] if spec["source"] == "file" else None,
    )
    with contextlib.redirect_stdout(sys.stderr):
        summary = task.run_task(opts, config, client, ModelRegistry(spec["registry"]))
    return {
        "status": summary["status"],
        "reason": summary.get("reason"),
        "rows_train": summary.get("rows_train"),
        "rows_validation": summary.get("rows_validation"),
        "accuracy": (summary.get("metrics") or {}).get("accuracy"),
        "timings_s": summary.get("timings_s"),
        "phases_s": {k: round(v, 3) for k, v in timers.seconds.items()},
        "peak_rss_after_mib": timers.rss_after,
        "import_s": round(imported_s, 3),
        "peak_rss_mib": _peak_rss_mib(),
    }


# --------------------------------------------------------------------------- parent


def _watch(cmd: list[str], env: dict[str, str], timeout: float, max_rss_mib: float):
    """Runs ``cmd``; kills it past ``timeout`` or ``max_rss_mib``. Returns (rc, out, err, why)."""
    import psutil

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=ROOT)
        ps = psutil.Process(proc.pid)
        deadline = time.monotonic() + timeout
        why = None
        while proc.poll() is None:
            try:
                rss = ps.memory_info().rss / 2**20
            except psutil.NoSuchProcess:
                break
            if rss > max_rss_mib:
                why = f"killed: RSS {rss:.0f} MiB above {max_rss_mib:.0f}"
            elif time.monotonic() > deadline:
                why = f"killed: over {timeout:.0f} s"
            if why:
                proc.kill()
                break
            time.sleep(0.2)
        rc = proc.wait()
        out.seek(0)
        err.seek(0)
        return rc, out.read().decode(), err.read().decode(), why


def _measure_one(spec: dict[str, Any], env: dict[str, str], timeout: float, max_rss: float):
    before = load1()
    t = time.monotonic()
    cmd = [sys.executable, "-m", "benchmarks.trainer_scale", "--child", json.dumps(spec)]
    rc, out, err, why = _watch(cmd, env, timeout, max_rss)
    wall = time.monotonic() - t
    entry: dict[str, Any] = {
        "rows": spec["rows"],
        "source": spec["source"],
        "epochs": spec["epochs"],
        "process_wall_s": round(wall, 2),
        "load1_before": before,
        "load1_after": load1(),
    }
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if rc != 0 or not lines:
        entry["error"] = why or f"exit {rc}: {err.strip().splitlines()[-3:]}"
        return entry
    child = json.loads(lines[-1])
    timings = child.get("timings_s") or {}
    phases = child.get("phases_s") or {}
    entry.update(
        read_s=timings.get("read_s"),
        validate_s=phases.get("validate"),
        encode_s=phases.get("encode"),
        fit_s=phases.get("fit"),
        train_s=timings.get("train_s"),
        evaluate_s=timings.get("evaluate_s"),
        export_s=timings.get("publish_s"),
        gates_s=timings.get("gates_s"),
        total_s=timings.get("total_s"),
        peak_rss_mib=child["peak_rss_mib"],
        status=child["status"],
        accuracy=child.get("accuracy"),
        detail=child,
    )
    return entry


def measure(
    rows: Sequence[int] = DEFAULT_ROWS,
    *,
    epochs: int = DEFAULT_EPOCHS,
    sources: Sequence[str] = ("file", "bigquery"),
    bigquery_max_rows: int = 100_000,
    timeout: float = 900.0,
    max_rss_mib: float = MAX_RSS_MIB,
    workdir: str | None = None,
) -> dict[str, Any]:
    """Runs the trainer at each size; returns ``{"trainer_rows": [...], ...}``.

    Each ``trainer_rows`` entry: ``rows, source, read_s, validate_s, encode_s,
    fit_s, train_s, evaluate_s, export_s, gates_s, total_s, peak_rss_mib``
    (``error`` instead when the run failed or was killed), with the load average.
    """
    from dataset.config import load_config

    rows = sorted(int(r) for r in rows)
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    out: dict[str, Any] = {
        "benchmark": "trainer_scale",
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "epochs": epochs,
        "trainer_rows": [],
        "emulator_loads": [],
    }
    with contextlib.ExitStack() as stack:
        tmp = Path(workdir or stack.enter_context(tempfile.TemporaryDirectory(prefix="tscale-")))
        files = {n: tmp / f"rows-{n}.jsonl" for n in rows}
        if not all(f.exists() for f in files.values()):  # a --workdir keeps them
            history = tmp / "history.jsonl"
            t = time.monotonic()
            write_history(history, rows[-1])
            out["generate_s"] = round(time.monotonic() - t, 1)
            print(f"[trainer_scale] {rows[-1]} rows generated in {out['generate_s']} s")
            for n in rows:
                tail_file(history, files[n], n)
            history.unlink()
        for n in rows:
            config = config_copy(tmp, n)
            for source in sources:
                if source == "bigquery" and n > bigquery_max_rows:
                    continue
                if source == "bigquery":
                    bq = stack.enter_context(_emulator(tmp, env))
                    client = bq["client"]
                    load = load_emulator(client, load_config(str(config)), files[n])
                    out["emulator_loads"].append({"rows": n, **load})
                    print(f"[trainer_scale] emulator load {n}: {load}", flush=True)
                spec = {
                    "rows": n,
                    "source": source,
                    "epochs": epochs,
                    "config": str(config),
                    "file": str(files[n]),
                    "registry": tempfile.mkdtemp(prefix=f"registry-{n}-{source}-", dir=tmp),
                }
                entry = _measure_one(spec, env, timeout, max_rss_mib)
                shutil.rmtree(spec["registry"], ignore_errors=True)
                out["trainer_rows"].append(entry)
                brief = {k: v for k, v in entry.items() if k != "detail"}
                print(f"[trainer_scale] {json.dumps(brief)}", flush=True)
    return out


_EMULATOR: dict[str, Any] = {}


@contextlib.contextmanager
def _emulator(tmp: Path, env: dict[str, str]):
    """The BigQuery emulator (started once per ``measure``); sets the env for the children."""
    if _EMULATOR:
        yield _EMULATOR
        return
    from dataset.resources import bigquery_client
    from local import emulators
    from local.credentials import ensure_fake_credentials

    state = tmp / "emulators"
    state.mkdir(exist_ok=True)
    creds = ensure_fake_credentials(state, PROJECT)
    with emulators.bigquery_emulator(state, project=PROJECT) as info:
        env.update(info.env)
        env["GOOGLE_APPLICATION_CREDENTIALS"] = str(creds)
        saved = {k: os.environ.get(k) for k in info.env}
        os.environ.update(info.env)
        _EMULATOR.update(client=bigquery_client(PROJECT))
        try:
            yield _EMULATOR
        finally:
            _EMULATOR.clear()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.trainer_scale", description=__doc__)
    p.add_argument("--rows", type=int, nargs="+", default=list(DEFAULT_ROWS))
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="the trainer's --epochs")
    p.add_argument("--sources", nargs="+", default=["file", "bigquery"])
    p.add_argument("--bigquery-max-rows", type=int, default=100_000)
    p.add_argument("--timeout", type=float, default=900.0, help="per run, seconds")
    p.add_argument("--max-rss-mib", type=float, default=MAX_RSS_MIB)
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--workdir", help="keep the generated files here (reused when present)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(json.loads(args.child)), default=str), flush=True)
        return 0
    result = measure(
        args.rows,
        epochs=args.epochs,
        sources=args.sources,
        bigquery_max_rows=args.bigquery_max_rows,
        timeout=args.timeout,
        max_rss_mib=args.max_rss_mib,
        workdir=args.workdir,
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2, default=str)
        f.write("\n")
    print(f"[trainer_scale] wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
