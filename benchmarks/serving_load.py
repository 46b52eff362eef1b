"""Load test: latency and throughput of the online prediction service.

Starts ``python -m serving.app`` on 127.0.0.1 (a free port) over a temporary
local registry holding the traffic model (``model.keras_model.build_model``),
waits for ``/readyz``, then runs bounded request loops with keep-alive HTTP
clients (httpx):

* ``single``: one instance per request;
* ``batch``: ``--batch`` instances per request (default 64);

each first with one client (sequential: pure latency), then with
``--clients`` concurrent clients (throughput). Every loop sends a fixed
number of requests (``--requests``; batched loops send a fifth as many) after
a short warm-up, and reports p50/p90/p99 latency in ms, requests/s and
instances/s. Every response is checked (HTTP 200 and one prediction per
instance). The server is stopped with SIGTERM at the end. Results are printed
and written to ``benchmarks/results/serving_load.json``.

    python -m benchmarks.serving_load [--requests 2000] [--batch 64] [--clients 4]

The client runs on the same (shared, 2-core) machine as the server, so the
figures are a floor, not a capacity plan.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import httpx  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "serving_load.json"
CONFIG = "configs/traffic.yaml"
WARMUP_PER_CLIENT = 10  # requests per client before latencies count


def _instances(n: int, seed: int) -> list[dict[str, Any]]:
    from dataset.times import utc_iso

    rng = np.random.default_rng(seed)
    return [
        {
            "sensor_id": f"S{int(rng.integers(0, 5000)):04d}",
            "event_time": utc_iso(1_700_000_000.0 + i),
            "vehicle_count": int(rng.integers(0, 400)),
            "mean_speed_kmh": float(rng.uniform(0, 200)),
            "occupancy": float(rng.uniform(0, 1)),
            "hour_of_day": float(rng.uniform(0, 24)),
            "road_type": ["highway", "arterial", "local"][i % 3],
            "congested": 0,
        }
        for i in range(n)
    ]


def _start(registry: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "serving.app", "--config", CONFIG, "--registry", registry]
        + ["--port", "0", "--log-level", "warning"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    line = process.stdout.readline()
    if not line.startswith("serving: listening on "):
        process.kill()
        raise RuntimeError(f"the service did not start: {line!r}")
    url = line.split()[-1]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if httpx.get(f"{url}/readyz").status_code == 200:
            return process, url
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("the service did not become ready within 120 s")


def _client_loop(url: str, bodies: list[bytes], per_request: int) -> list[float]:
    latencies = []
    headers = {"content-type": "application/json"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        for i, body in enumerate(bodies):
            started = time.perf_counter()
            response = client.post("/v1/predict", content=body)
            elapsed = time.perf_counter() - started
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
            if len(response.json()["predictions"]) != per_request:
                raise RuntimeError("wrong number of predictions")
            if i >= WARMUP_PER_CLIENT:
                latencies.append(elapsed)
    return latencies


def _loop(url: str, per_request: int, requests: int, clients: int) -> dict[str, Any]:
    per_client = max(1, requests // clients)
    bodies = [
        [
            json.dumps({"instances": _instances(per_request, seed=c * 100_000 + i)}).encode()
            for i in range(per_client + WARMUP_PER_CLIENT)
        ]
        for c in range(clients)
    ]
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda b: _client_loop(url, b, per_request), bodies))
    wall = time.perf_counter() - started
    latencies = np.asarray([x for r in results for x in r]) * 1000.0
    sent = sum(len(b) for b in bodies)
    return {
        "instances_per_request": per_request,
        "clients": clients,
        "requests": int(sent),
        "p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "p90_ms": round(float(np.percentile(latencies, 90)), 2),
        "p99_ms": round(float(np.percentile(latencies, 99)), 2),
        "requests_per_s": round(sent / wall, 1),
        "instances_per_s": round(sent * per_request / wall, 1),
    }


def run(requests: int, batch: int, clients: int) -> dict[str, Any]:
    from dataset.config import load_config
    from model.keras_model import build_model
    from model.registry import ModelRegistry

    with tempfile.TemporaryDirectory(prefix="serving-load-") as tmp:
        registry = ModelRegistry(os.path.join(tmp, "registry"))
        version = registry.publish(build_model(load_config(ROOT / CONFIG)), {"note": "load"})
        registry.promote(version)
        process, url = _start(registry.root)
        try:
            loops = {}
            for name, per_request, n in (
                ("single", 1, requests),
                ("batch", batch, max(clients, requests // 5)),
            ):
                for c in (1, clients):
                    loops[f"{name}_{c}_client{'s' if c > 1 else ''}"] = _loop(
                        url, per_request, n, c
                    )
                    print(json.dumps({name: loops[list(loops)[-1]]}), flush=True)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
    return {
        "config": CONFIG,
        "loops": loops,
        "server_exit_code": process.returncode,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "measured_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="single-instance requests")
    parser.add_argument("--batch", type=int, default=64, help="instances per batched request")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)
    if min(args.requests, args.batch, args.clients) <= 0:
        parser.error("--requests, --batch and --clients must be positive")
    result = run(args.requests, args.batch, args.clients)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
