"""A Cloud Storage stand-in for tests: PyPI ``gcp-storage-emulator``, with preconditions.

The ``gcs_emulator`` session fixture starts ``python -m tests.gcs_fixtures --port N``
(on a free port), waits until ``GET /`` answers (deadline 60 s), sets
``STORAGE_EMULATOR_HOST`` (google-cloud-storage then talks to it without
credentials) and stops the process group at the end.

The emulator (2026.7.19) ignores ``ifGenerationMatch`` / ``ifGenerationNotMatch``.
Real Cloud Storage answers a failed precondition with HTTP 412, and the
registry's compare-and-swap depends on that, so ``serve`` wraps the
emulator's object handlers with the same check before starting it. Its HTTP
server handles one request at a time, so the check and the write cannot
interleave with another request (Cloud Storage makes them atomic too).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
START_TIMEOUT_S = 60.0


def _object_name(request) -> str | None:
    params = request.params or {}
    if params.get("dest_object_id"):
        return params["dest_object_id"]
    if params.get("object_id"):
        return params["object_id"]
    if "name" in request.query:
        return request.query["name"][0]
    data = request.data
    if isinstance(data, dict):
        meta = data.get("meta") if isinstance(data.get("meta"), dict) else data
        return meta.get("name")
    return None


def _with_preconditions(handler):
    """Wraps an emulator handler with Cloud Storage's generation preconditions."""
    from gcp_storage_emulator.exceptions import NotFound

    @functools.wraps(handler)
    def wrapped(request, response, storage, *args, **kwargs):
        match = request.query.get("ifGenerationMatch")
        not_match = request.query.get("ifGenerationNotMatch")
        if match or not_match:
            params = request.params or {}
            bucket = params.get("dest_bucket_name") or params.get("bucket_name")
            try:
                current = int(storage.get_file_obj(bucket, _object_name(request))["generation"])
            except NotFound:
                current = 0
            if (match and int(match[0]) != current) or (not_match and int(not_match[0]) == current):
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json({"error": {"code": 412, "message": "conditionNotMet", "errors": []}})
                return None
        return handler(request, response, storage, *args, **kwargs)

    return wrapped


def serve(port: int, host: str = HOST) -> None:
    """Runs the emulator (in memory) with precondition checks until killed."""
    from gcp_storage_emulator import server

    server.HANDLERS = tuple(
        (regex, {method: _with_preconditions(fn) for method, fn in methods.items()})
        for regex, methods in server.HANDLERS
    )
    server.create_server(host, port, in_memory=True).run()


def _healthy(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The storage emulator; yields ``http://host:port`` and sets STORAGE_EMULATOR_HOST."""
    from local.emulators import free_port

    port = free_port(HOST)
    url = f"http://{HOST}:{port}"
    log = tmp_path_factory.mktemp("gcs") / "emulator.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.gcs_fixtures", "--port", str(port)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _healthy(url + "/"):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"storage emulator did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        os.environ["STORAGE_EMULATOR_HOST"] = url
        yield url
    finally:
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def gcs_bucket(gcs_emulator: str) -> str:
    """A fresh bucket on the emulator; returns ``gs://<bucket>``."""
    from google.cloud import storage

    name = f"registry-{uuid.uuid4().hex[:12]}"
    storage.Client().create_bucket(name)
    return f"gs://{name}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Storage emulator with generation preconditions")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default=HOST)
    args = parser.parse_args(argv)
    print(json.dumps({"serving": f"http://{args.host}:{args.port}"}), flush=True)
    serve(args.port, args.host)


if __name__ == "__main__":
    main()
