"""Soak and operator drill: a long ``./run_local.sh`` with memory and endpoint checks.

Runs ``./run_local.sh --duration D`` (any extra arguments pass through) and, while it
runs:

* samples the pipeline process's resident memory every ``--sample-seconds`` (from
  ``<state dir>/pipeline.pid``);
* at ``--checks-at`` seconds into the simulation, does what an operator would do:
  ``GET`` the dashboard, ``POST /v1/predict`` with two real events (read back from
  the training table) and with ``{"instances": "not-a-list"}``, publishes the poison
  messages of ``local.poison`` (their ids join the reconciliation), and drops a JSON
  Lines file of events into the file trigger's inbox;
* keeps ``run_local.sh``'s output in ``<state dir>/soak-run_local.log``.

It writes one JSON document (``--out``, default ``benchmarks/results/soak.json``):
the RSS samples (with the machine's 1-minute load average), the RSS growth after
warm-up (``--warmup-seconds``) and after the pipeline's state horizon (both over
the samples taken while events are published, not the drain), each
check's outcome, and ``run_local.sh``'s final summary line. Exit code:
``run_local.sh``'s.

The state horizon (``state_horizon_seconds``) is how long the pipeline keeps
state by design before it can start to expire: the dedup window
(``--dedup_window_seconds``, 600 s by default, passed after ``--``), a window's
size plus its allowed lateness plus the late-firing delay, the quality
window's. Until then state grows with the data; memory can only be flat after
it. With ``LOCAL_MEMORY_TRACE`` set (``local.memory_trace``), the document also
summarizes the pipeline's memory trace (heap, gc objects, runner state per step).

    python -m local.soak --duration 600 [--rate N] [--checks-at 120] [--out FILE] [-- PIPELINE ARGS]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from dataset.config import DatasetConfig, load_config
from dataset.times import format_event_time, to_datetime
from local import memory_trace

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DEDUP_WINDOW_SECONDS = 600  # pipelines.options' --dedup_window_seconds default


def _http(method: str, url: str, body: Any = None, timeout: float = 30.0) -> dict[str, Any]:
    """One request; returns ``{"status", "body"}`` (body parsed as JSON when it is)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    except OSError as e:
        return {"status": None, "error": str(e)}
    try:
        parsed: Any = json.loads(raw)
    except ValueError:
        parsed = raw[:200].decode(errors="replace")
    return {"status": status, "body": parsed}


def events_from_training_rows(rows: Sequence[dict], config: DatasetConfig) -> list[dict]:
    """Events (as a publisher sends them) rebuilt from rows of the training table."""
    events = []
    for row in rows:
        t = to_datetime(row["event_time"]).timestamp()
        event = {
            config.key_field: row[config.key_field],
            config.event_time_field: format_event_time(t, config.event_time_format),
        }
        event.update({f.name: row[f.name] for f in config.features})
        if config.label.source == "inline":
            event[config.label.field] = row[config.label.field]
        events.append(event)
    return events


def _training_events(config: DatasetConfig, env: dict[str, str], n: int) -> list[dict]:
    from dataset.resources import bigquery_client

    os.environ.update(env)
    client = bigquery_client(env["PROJECT"])
    table = f"{env['PROJECT']}.{env['BQ_DATASET']}.{config.tables.training_examples}"
    rows = [dict(r) for r in client.query(f"SELECT * FROM `{table}` LIMIT {int(n)}").result()]
    return events_from_training_rows(rows, config)


def operator_checks(config: DatasetConfig, env: dict[str, str], state_dir: Path) -> dict:
    """The endpoint, poison and file-drop checks (each outcome recorded, none raises)."""
    out: dict[str, Any] = {}
    out["dashboard"] = _http("GET", f"http://127.0.0.1:{env['DASHBOARD_PORT']}/")
    if isinstance(out["dashboard"].get("body"), str):
        out["dashboard"]["body"] = out["dashboard"]["body"][:80]
    predict_url = f"http://127.0.0.1:{env['SERVING_PORT']}/v1/predict"
    try:
        events = _training_events(config, env, 22)
    except Exception as e:  # noqa: BLE001 - recorded, the soak goes on
        out["events_error"] = f"{type(e).__name__}: {e}"
        events = []
    instances = [{k: v for k, v in e.items() if k != config.label.field} for e in events[:2]]
    out["predict"] = _http("POST", predict_url, {"instances": instances})
    out["predict_not_a_list"] = _http("POST", predict_url, {"instances": "not-a-list"})
    poison = subprocess.run(
        [sys.executable, "-m", "local.poison", "--config", env["CONFIG"],
         "--topic", f"projects/{env['PROJECT']}/topics/{env['TOPIC']}",
         "--ids-file", str(state_dir / "published-ids.txt")],
        capture_output=True, text=True, timeout=120, env={**os.environ, **env}, check=False,
    )  # fmt: skip
    out["poison"] = {"exit_code": poison.returncode, "stdout": poison.stdout.strip()[-500:]}
    inbox = state_dir / "incoming"
    if events[2:]:
        inbox.mkdir(parents=True, exist_ok=True)
        tmp = inbox / "soak-drop.jsonl.tmp"
        tmp.write_text("".join(json.dumps(e) + "\n" for e in events[2:]))
        tmp.rename(inbox / "soak-drop.jsonl")
        out["file_dropped"] = {"file": str(inbox / "soak-drop.jsonl"), "rows": len(events) - 2}
    return out


def state_horizon_seconds(config: DatasetConfig, pipeline_args: Sequence[str]) -> int:
    """How long the pipeline keeps state by design (see the module docstring)."""
    from transforms.aggregation import LATE_FIRING_DELAY_SECONDS

    dedup = DEFAULT_DEDUP_WINDOW_SECONDS
    args = list(pipeline_args)
    for i, arg in enumerate(args):
        if arg == "--dedup_window_seconds" and i + 1 < len(args):
            dedup = int(args[i + 1])
        elif arg.startswith("--dedup_window_seconds="):
            dedup = int(arg.split("=", 1)[1])
    windows = [
        s.size_seconds + s.allowed_lateness_seconds + LATE_FIRING_DELAY_SECONDS
        for s in config.windows
    ]
    quality = 2 * config.evaluation_window_seconds + LATE_FIRING_DELAY_SECONDS
    return max([dedup, quality, *windows])


def slope_mib_per_minute(samples: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of RSS over time, in MiB per minute."""
    if len(samples) < 2:
        return None
    mean_t = statistics.fmean(t for t, _ in samples)
    mean_m = statistics.fmean(m for _, m in samples)
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    if var == 0:
        return None
    cov = sum((t - mean_t) * (m - mean_m) for t, m in samples)
    return round(cov / var * 60, 2)


def rss_growth(samples: Sequence[Sequence[float]], warmup_s: float) -> dict[str, Any]:
    """RSS after warm-up: first and last minute's medians, the growth per minute
    between them, and the least-squares slope."""
    after = [(s[0], s[1]) for s in samples if s[0] >= warmup_s]
    if len(after) < 4:
        return {"samples_after_warmup": len(after)}
    first = [(t, m) for t, m in after if t < after[0][0] + 60]
    last = [(t, m) for t, m in after if t > after[-1][0] - 60]
    first_mib = statistics.median(m for _, m in first)
    last_mib = statistics.median(m for _, m in last)
    # Between the two minutes' middles: medians describe those moments.
    minutes = (statistics.median(t for t, _ in last) - statistics.median(t for t, _ in first)) / 60
    return {
        "samples_after_warmup": len(after),
        "first_minute_median_mib": round(first_mib, 1),
        "last_minute_median_mib": round(last_mib, 1),
        "growth_mib_per_minute": round((last_mib - first_mib) / max(minutes, 1e-9), 2),
        "slope_mib_per_minute": slope_mib_per_minute(after),
        "peak_mib": round(max(m for _, m in after), 1),
    }


def trace_summary(path: Path) -> dict[str, Any] | None:
    """The pipeline's memory trace (``local.memory_trace``), summarized; None without one."""
    try:
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return None
    if not lines:
        return None
    out = memory_trace.summarize(lines)
    first, last = lines[0], lines[-1]
    out["first"] = {k: first.get(k) for k in ("t", "rss_mib", "malloc", "gc_objects")}
    out["last"] = {k: last.get(k) for k in ("t", "rss_mib", "malloc", "gc_objects")}
    out["runner_state_first"] = first.get("runner_state")
    out["runner_state_peak_keys"] = max(
        (sum(s["keys"] for s in r.get("runner_state", [])), r["t"]) for r in lines
    )
    out["runner_state_last"] = last.get("runner_state")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the soak; writes the JSON document; returns run_local.sh's exit code."""
    p = argparse.ArgumentParser(prog="python -m local.soak", description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=int, default=600, help="simulated seconds (600)")
    p.add_argument("--checks-at", type=float, default=120.0, help="operator checks, s in (120)")
    p.add_argument("--sample-seconds", type=float, default=10.0)
    p.add_argument("--warmup-seconds", type=float, default=120.0)
    p.add_argument("--config", default="configs/traffic.yaml")
    p.add_argument("--rate", type=float, default=None, help="events/s (run_local.sh's default)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "soak.json"))
    args, extra = p.parse_known_args(argv)
    if args.duration <= 0 or args.sample_seconds <= 0:
        p.error("--duration and --sample-seconds must be positive")
    config = load_config(args.config)
    state_dir = Path(os.environ.get("RUN_LOCAL_STATE_DIR", REPO / ".local" / "run"))
    env = {
        "PROJECT": os.environ.get("PROJECT", "local-project"),
        "CONFIG": args.config,
        "TOPIC": os.environ.get("TOPIC", f"{config.name}-events"),
        "BQ_DATASET": os.environ.get("BQ_DATASET", f"{config.name}_local"),
        "DASHBOARD_PORT": os.environ.get("DASHBOARD_PORT", "8080"),
        "SERVING_PORT": os.environ.get("SERVING_PORT", "8081"),
        "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{os.environ.get('PUBSUB_PORT', '8085')}",
        "BIGQUERY_EMULATOR_HOST": f"http://127.0.0.1:{os.environ.get('BQ_REST_PORT', '9050')}",
    }
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / "soak-run_local.log"
    cmd = [str(REPO / "run_local.sh"), "--duration", str(args.duration), "--config", args.config]
    if args.rate is not None:
        cmd += ["--rate", f"{args.rate:g}"]
    cmd += extra
    pipeline_args = extra[extra.index("--") + 1 :] if "--" in extra else []
    horizon = state_horizon_seconds(config, pipeline_args)
    trace_path = Path(os.environ.get("LOCAL_MEMORY_TRACE_FILE", state_dir / "memory-trace.jsonl"))
    trace_path.unlink(missing_ok=True)
    print(f"[soak] {' '.join(cmd)} (log {log_path})", flush=True)
    samples: list[tuple[float, float, float]] = []
    checks: dict[str, Any] = {}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        started: float | None = None
        checker: threading.Thread | None = None
        while proc.poll() is None:
            time.sleep(args.sample_seconds)
            try:
                pid = int((state_dir / "pipeline.pid").read_text().strip())
                rss = psutil.Process(pid).memory_info().rss / 2**20
            except (OSError, ValueError, psutil.Error):
                continue
            started = started if started is not None else time.monotonic()
            t = time.monotonic() - started
            load1 = os.getloadavg()[0]
            samples.append((round(t, 1), round(rss, 1), round(load1, 2)))
            print(f"[soak] t={t:6.0f}s pipeline RSS {rss:7.1f} MiB load1 {load1:.1f}", flush=True)
            if checker is None and t >= args.checks_at:
                checker = threading.Thread(
                    target=lambda: checks.update(operator_checks(config, env, state_dir)),
                    daemon=True,
                )
                checker.start()
        if checker is not None:
            checker.join(timeout=180)
    lines = [ln for ln in log_path.read_text().splitlines() if ln.startswith("{")]
    summary = json.loads(lines[-1]) if lines else None
    # While events are published: the drain after --duration is not steady state.
    live = [s for s in samples if s[0] <= args.duration]
    document = {
        "command": cmd,
        "exit_code": proc.returncode,
        "sample_seconds": args.sample_seconds,
        "machine": {"cpus": os.cpu_count(), "note": "shared by other engineers' jobs"},
        "rss_mib_columns": ["t_s", "rss_mib", "load1"],
        "rss_mib": samples,
        "load1_median": round(statistics.median(s[2] for s in samples), 2) if samples else None,
        "rss_after_warmup": rss_growth(live, args.warmup_seconds),
        "state_horizon_seconds": horizon,
        "rss_after_state_horizon": rss_growth(live, horizon),
        "memory_trace": trace_summary(trace_path),
        "operator_checks": checks,
        "summary": summary,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(document, indent=1, default=str) + "\n")
    print(
        json.dumps(
            {
                "rss_after_warmup": document["rss_after_warmup"],
                "rss_after_state_horizon": document["rss_after_state_horizon"],
                "out": args.out,
            }
        )
    )
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
