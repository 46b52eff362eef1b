"""The online prediction service (FastAPI + uvicorn), live or hybrid.

::

    python -m serving.app --config configs/traffic.yaml --registry /tmp/registry \\
        [--host 127.0.0.1 --port 8081] [--poll-seconds 5] \\
        [--hybrid-table PROJECT.DATASET.TABLE --hybrid-refresh-seconds 300] \\
        [--history-table PROJECT.DATASET.TABLE | --project P --bq_dataset D] \\
        [--history-refresh-seconds 60 --history-max-keys 100000] \\
        [--max-body-bytes 1048576 --max-instances 1000]

Endpoints:

* ``POST /v1/predict`` ``{"instances": [{...event fields...}, ...]}`` ->
  ``{"model_version", "predictions": [{<key>, "prediction", "predicted_label",
  "model_version", "path": "live"|"precomputed"[, "history"]}, ...]}``. Instances are
  validated like pipeline events (``serving.predictor``); one invalid
  instance rejects the request with a 4xx whose body names the fields.
* ``GET /healthz``: the process is up. ``GET /readyz``: 200 once a model
  version is loaded (and, with a history store, its first load was tried),
  else 503.
* ``GET /metrics``: Prometheus text format (``serving.metrics``).

A background thread polls the registry's ``CURRENT`` every
``--poll-seconds`` through ``model.handler.HotSwapModel`` (load outside the
lock, swap under it, keep the last good model); request threads only read
the serving model. In hybrid mode a second thread reloads the precomputed
predictions every ``--hybrid-refresh-seconds``.

With ``history_features`` in the config, ``--history-table`` (the
training-examples table; default with ``--project`` and ``--bq_dataset``: the
config's ``training_examples`` table there) feeds a ``serving.history.KeyHistory`` store,
reloaded every ``--history-refresh-seconds`` on a third thread; each live
prediction says where its history values came from (``"history": "given"``
by the instance, ``"found"`` in the store, ``"missing"``: encoded as the
defined default). Without a table every value not given is missing (a
warning at start says so). Without ``history_features`` nothing is read.

On start it prints
``serving: listening on http://HOST:PORT``; SIGTERM/SIGINT stop it cleanly.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from dataset.config import DatasetConfig, load_config
from serving.history import DEFAULT_MAX_KEYS as DEFAULT_HISTORY_MAX_KEYS
from serving.history import KeyHistory
from serving.hybrid import PrecomputedPredictions
from serving.metrics import ServingMetrics
from serving.predictor import (
    DEFAULT_MAX_INSTANCES,
    ModelUnavailable,
    Predictor,
    RequestError,
    parse_request,
    validate_instances,
)

_LOG = logging.getLogger(__name__)
DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_POLL_SECONDS = 5.0
DEFAULT_REFRESH_SECONDS = 300.0
DEFAULT_HISTORY_REFRESH_SECONDS = 60.0


class _Repeater:
    """Calls ``fn`` now and then every ``interval`` seconds on a daemon thread."""

    def __init__(self, name: str, fn: Callable[[], None], interval: float):
        self._fn = fn
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._fn()
            except Exception:  # noqa: BLE001 - a background failure must not end the loop
                _LOG.exception("%s failed; retrying in %.1fs", self._thread.name, self._interval)
            self._stop.wait(self._interval)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)


class Service:
    """The service's state: the hot-swapped model, the precomputed set, metrics.

    Args:
        config: the dataset config.
        registry_root: the model registry (local directory or ``gs://``).
        poll_seconds: how often ``CURRENT`` is read.
        precomputed: hybrid mode's precomputed predictions (None: all live).
        refresh_seconds: how often ``precomputed`` is reloaded.
        history: with ``history_features``, the per-key history store (None:
            history values not given by an instance are missing).
        history_refresh_seconds: how often ``history`` is reloaded.
        max_body_bytes, max_instances: request limits (413 above them).
        load: loads a version into a predict function (default
            ``model.handler.load_predict_fn`` on the registry).
    """

    def __init__(
        self,
        config: DatasetConfig,
        registry_root: str,
        *,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
        precomputed: PrecomputedPredictions | None = None,
        refresh_seconds: float = DEFAULT_REFRESH_SECONDS,
        history: KeyHistory | None = None,
        history_refresh_seconds: float = DEFAULT_HISTORY_REFRESH_SECONDS,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_instances: int = DEFAULT_MAX_INSTANCES,
        load: Callable[[str], Any] | None = None,
    ):
        from model.handler import HotSwapModel, load_predict_fn
        from model.registry import ModelRegistry

        if poll_seconds <= 0 or refresh_seconds <= 0 or history_refresh_seconds <= 0:
            raise ValueError(
                "--poll-seconds, --hybrid-refresh-seconds and --history-refresh-seconds "
                "must be positive"
            )
        if history is not None and not config.history_features:
            raise ValueError(f"config {config.name!r} has no history_features to look up")
        if max_body_bytes <= 0 or max_instances <= 0:
            raise ValueError("--max-body-bytes and --max-instances must be positive")
        self.config = config
        self.registry = ModelRegistry(registry_root)
        self.max_body_bytes = max_body_bytes
        self.max_instances = max_instances
        self.metrics = ServingMetrics()
        self.precomputed = precomputed
        registry = self.registry
        self.model = HotSwapModel(
            registry.current_version,
            load or (lambda version: load_predict_fn(registry, version)),
            poll_seconds,
        )
        self._loaded = threading.Event()
        self._workers = [_Repeater("model-poller", self._poll_model, poll_seconds)]
        if precomputed is not None:
            self._workers.append(
                _Repeater("precomputed-refresh", self._refresh_precomputed, refresh_seconds)
            )
        self.history = history
        if history is not None:
            self._workers.append(
                _Repeater("history-refresh", self._refresh_history, history_refresh_seconds)
            )
        elif config.history_features:
            _LOG.warning(
                "config %r has history_features but no --history-table: history values an "
                "instance does not carry are served as missing (scores can differ from the "
                "pipeline's)",
                config.name,
            )
        lookup = self._lookup if precomputed is not None else None
        self.predictor = Predictor(
            config, self.model.serving, lookup, history.lookup if history is not None else None
        )

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        for worker in self._workers:
            worker.start()

    def stop(self) -> None:
        for worker in self._workers:
            worker.stop()

    @property
    def ready(self) -> bool:
        """A model is loaded and, with a history store, its first load was tried."""
        history_tried = self.history is None or (
            self.history.refreshed_at is not None or self.history.errors > 0
        )
        return self.model.version is not None and history_tried

    def wait_ready(self, timeout: float) -> bool:
        """Waits until ``ready`` (or ``timeout`` passes); returns readiness."""
        return self._loaded.wait(timeout)

    def _poll_model(self) -> None:
        version, _ = self.model.acquire()
        self.metrics.set_model(version)
        if self.ready:
            self._loaded.set()

    def _refresh_precomputed(self) -> None:
        assert self.precomputed is not None
        ok = self.precomputed.refresh(time.time())
        self.metrics.set_precomputed(len(self.precomputed), ok)

    def _refresh_history(self) -> None:
        assert self.history is not None
        ok = self.history.refresh(time.time())
        self.metrics.set_history(len(self.history), ok)
        if self.ready:
            self._loaded.set()

    def _lookup(self, key: str):
        assert self.precomputed is not None
        hit = self.precomputed.lookup(key)
        self.metrics.cache_lookup(hit is not None)
        return hit

    # ------------------------------------------------------------- requests

    def predict(self, body: bytes) -> dict[str, Any]:
        """Parses, validates and scores one request body.

        Raises:
            RequestError: the client's mistake (4xx).
            ModelUnavailable: no model loaded yet (503).
        """
        instances = parse_request(body, self.max_instances)
        try:
            records = validate_instances(instances, self.config)
        except RequestError as e:
            self.metrics.invalid_instances(len(e.errors))
            raise
        response = self.predictor.predict(records)
        predictions = response["predictions"]
        self.metrics.served(p["path"] for p in predictions)
        self.metrics.history_sources(p["history"] for p in predictions if "history" in p)
        return response


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(
            f"request body of {declared} bytes is over the {limit}-byte limit", status=413
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(f"request body is over the {limit}-byte limit", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(service: Service, manage: bool = True) -> FastAPI:
    """The FastAPI application around ``service``.

    Args:
        service: the service state.
        manage: start the service's background threads on startup and stop
            them on shutdown (the app's lifespan).
    """

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        if manage:
            service.start()
        try:
            yield
        finally:
            if manage:
                service.stop()

    app = FastAPI(title="Prediction service", lifespan=lifespan, docs_url=None, redoc_url=None)
    metrics = service.metrics

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        metrics.request(request.url.path, response.status_code, time.perf_counter() - started)
        return response

    @app.post("/v1/predict")
    async def predict(request: Request) -> Response:
        try:
            body = await _read_body(request, service.max_body_bytes)
            return JSONResponse(service.predict(body))
        except RequestError as e:
            return JSONResponse(e.body(), status_code=e.status)
        except ModelUnavailable as e:
            return JSONResponse({"error": str(e), "field": None}, status_code=503)
        except Exception as e:  # noqa: BLE001 - our own fault: 500, logged with its trace
            _LOG.exception("prediction failed")
            return JSONResponse(
                {"error": f"internal error: {type(e).__name__}", "field": None}, status_code=500
            )

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        body = {
            "ready": service.ready,
            "model_version": service.model.version,
            "precomputed_keys": None if service.precomputed is None else len(service.precomputed),
            "history_keys": None if service.history is None else len(service.history),
        }
        return JSONResponse(body, status_code=200 if service.ready else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        data, content_type = metrics.exposition()
        return Response(data, media_type=content_type)

    return app


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m serving.app",
        description="Online (and hybrid) predictions with the registry's current model.",
    )
    p.add_argument("--config", required=True, help="dataset config (local path or gs://)")
    p.add_argument("--registry", required=True, help="model registry root (dir or gs://)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8081, help="port (default 8081; 0: any free)")
    p.add_argument(
        "--poll-seconds",
        type=float,
        default=DEFAULT_POLL_SECONDS,
        help=f"how often CURRENT is read (default {DEFAULT_POLL_SECONDS:g})",
    )
    p.add_argument(
        "--hybrid-table",
        help="PROJECT.DATASET.TABLE of batch predictions: keys found there are served "
        "precomputed, the others live",
    )
    p.add_argument(
        "--hybrid-refresh-seconds",
        type=float,
        default=DEFAULT_REFRESH_SECONDS,
        help=f"how often the hybrid table is reread (default {DEFAULT_REFRESH_SECONDS:g})",
    )
    p.add_argument(
        "--history-table",
        help="PROJECT.DATASET.TABLE of training examples: with history_features in the "
        "config, each key's recent events come from there (ignored without them; "
        "default with --project and --bq_dataset: the config's training-examples table)",
    )
    p.add_argument("--project", help="project of the training-examples table")
    p.add_argument("--bq_dataset", "--bq-dataset", dest="bq_dataset", help="its dataset")
    p.add_argument(
        "--history-refresh-seconds",
        type=float,
        default=DEFAULT_HISTORY_REFRESH_SECONDS,
        help=f"how often the history is reread (default {DEFAULT_HISTORY_REFRESH_SECONDS:g})",
    )
    p.add_argument(
        "--history-max-keys",
        type=int,
        default=DEFAULT_HISTORY_MAX_KEYS,
        help=f"keys whose history is kept (default {DEFAULT_HISTORY_MAX_KEYS})",
    )
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    p.add_argument("--max-instances", type=int, default=DEFAULT_MAX_INSTANCES)
    p.add_argument("--log-level", default="info", help="uvicorn/logging level (default info)")
    return p


def build_service(args: argparse.Namespace) -> Service:
    """The ``Service`` for parsed arguments (``ValueError`` for bad ones)."""
    config = load_config(args.config)
    precomputed = None
    if args.hybrid_table:
        from dataset.resources import bigquery_client
        from serving.hybrid import bigquery_loader, parse_table

        project, _, _ = parse_table(args.hybrid_table)
        loader = bigquery_loader(bigquery_client(project), args.hybrid_table, config)
        precomputed = PrecomputedPredictions(loader)
    history = None
    history_table = args.history_table
    if not history_table and args.project and args.bq_dataset:
        history_table = f"{args.project}.{args.bq_dataset}.{config.tables.training_examples}"
    if history_table and config.history_features:
        from dataset.resources import bigquery_client
        from serving.history import bigquery_loader as history_loader
        from serving.hybrid import parse_table

        project, _, _ = parse_table(history_table, "--history-table", "the training-examples table")
        loader = history_loader(bigquery_client(project), history_table, config)
        history = KeyHistory(config, loader, max_keys=args.history_max_keys)
    return Service(
        config,
        args.registry,
        poll_seconds=args.poll_seconds,
        precomputed=precomputed,
        refresh_seconds=args.hybrid_refresh_seconds,
        history=history,
        history_refresh_seconds=args.history_refresh_seconds,
        max_body_bytes=args.max_body_bytes,
        max_instances=args.max_instances,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the service until SIGTERM/SIGINT; returns the exit code."""
    import uvicorn

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        service = build_service(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    class _Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            for server in self.servers:
                for sock in server.sockets:
                    host, port = sock.getsockname()[:2]
                    print(f"serving: listening on http://{host}:{port}", flush=True)

    server = _Server(
        uvicorn.Config(
            create_app(service),
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            access_log=False,
        )
    )
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal to
    # the handler that was installed before it ran: make that one a no-op, so a
    # requested stop exits 0 rather than dying of the signal.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, lambda signum, frame: None)
    server.run()
    print("serving: stopped", flush=True)
    return 0 if server.started else 1


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
