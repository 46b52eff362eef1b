"""The dashboard web app (the design documents' App Engine architecture).

A user asks for training from a page and sees the training statistics when it
is done. Serves, by default on ``http://127.0.0.1:8080/``::

    python -m dashboard.app --project P --bq_dataset D --config C --registry R \\
        --retrain_topic projects/P/topics/T [--host 127.0.0.1] [--port 8080] \\
        [--refresh-seconds 15] [--lookback-days 7]

* ``GET /``: the page (``dashboard.render``): pipeline table counts, model
  versions, training runs with data validation, online quality plots,
  dead letters, retrain triggers.
* ``GET /api/state``: the same data as JSON. ``GET /healthz``: liveness.
* ``POST /retrain``: publishes a ``manual`` retrain trigger, the same message
  the pipeline publishes (``trainer.trigger_requests``); the launcher records
  and runs it like any other.
* ``POST /rollback`` (``to_version``, ``if_current``): ``ModelRegistry.rollback``
  pinned to the version the page showed as current; if ``CURRENT`` moved
  meanwhile nothing changes and the page says so.

Everything is read from BigQuery and the registry on each request: there is
no second source of truth. It binds to localhost by default; in the cloud put
IAP or Cloud Run IAM in front of it (README). POSTs from another origin are
refused (a page elsewhere cannot press the buttons through a user's browser).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import urllib.parse
from collections.abc import Sequence
from typing import Any

from fastapi import Request

from dashboard import data, render
from dataset.config import DatasetConfig, load_config
from model.registry import CurrentChanged, ModelRegistry

logger = logging.getLogger(__name__)

MAX_FORM_BYTES = 4096


class Dashboard:
    """The dashboard's dependencies: where it reads, where it publishes.

    Args:
        source: BigQuery client, project, dataset and config (``dashboard.data.Source``).
        registry: the model registry.
        publisher: a ``pubsub_v1.PublisherClient`` (created on first use if None).
        retrain_topic: ``projects/<p>/topics/<t>``.
        refresh_seconds: the page reloads itself this often (0: never).
    """

    def __init__(
        self,
        source: data.Source,
        registry: ModelRegistry,
        retrain_topic: str,
        publisher=None,
        refresh_seconds: int = 15,
    ):
        self.source = source
        self.registry = registry
        self.retrain_topic = retrain_topic
        self._publisher = publisher
        self.refresh_seconds = refresh_seconds

    @property
    def config(self) -> DatasetConfig:
        return self.source.config

    @property
    def publisher(self):
        if self._publisher is None:
            from google.cloud import pubsub_v1

            self._publisher = pubsub_v1.PublisherClient()
        return self._publisher

    def state(self) -> dict[str, Any]:
        return data.collect_state(self.source, self.registry)

    def retrain(self) -> str:
        """Publishes a manual trigger; returns its id."""
        from trainer.trigger_requests import new_trigger, submit_trigger

        trigger = new_trigger(self.config, "manual", details={"requested_by": "dashboard"})
        submit_trigger(
            trigger,
            bq_client=self.source.client,
            publisher=self.publisher,
            project=self.source.project,
            bq_dataset=self.source.dataset,
            config=self.config,
            topic=self.retrain_topic,
        )
        return str(trigger["trigger_id"])

    def rollback(self, to_version: str, if_current: str | None) -> str:
        """Rolls back to ``to_version`` if ``CURRENT`` is still ``if_current``; returns it."""
        return self.registry.rollback(
            to_version, reason=f"dashboard: manual rollback to {to_version}", if_current=if_current
        )


def create_app(dash: Dashboard):
    """The FastAPI application serving ``dash``."""
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse

    app = FastAPI(title=f"{dash.config.name} continuous training", docs_url=None, redoc_url=None)

    def redirect(message: str):
        return RedirectResponse("/?" + urllib.parse.urlencode({"msg": message}), status_code=303)

    async def form(request: Request) -> dict[str, str] | None:
        """The urlencoded form of a same-origin POST (None: refused)."""
        origin = request.headers.get("origin")
        if origin and urllib.parse.urlsplit(origin).netloc != request.headers.get("host"):
            return None
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            return None
        parsed = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
        return {k: v[-1] for k, v in parsed.items()}

    @app.get("/", response_class=HTMLResponse)
    def index(msg: str | None = None) -> HTMLResponse:
        state = dash.state()
        versions = (state.get("models") or {}).get("versions") or []
        html = render.page(
            state,
            targets=data.rollback_targets(versions),
            message=msg,
            refresh_seconds=dash.refresh_seconds,
        )
        return HTMLResponse(html)

    @app.get("/api/state")
    def api_state() -> JSONResponse:
        return JSONResponse(dash.state())

    @app.get("/healthz", response_class=PlainTextResponse)
    def healthz() -> str:
        return "ok"

    @app.post("/retrain")
    async def retrain(request: Request):
        if await form(request) is None:
            return PlainTextResponse("cross-origin or oversized request refused", 403)
        try:
            trigger_id = await _in_thread(dash.retrain)
        except Exception as e:  # shown to the user; the page stays usable
            logger.exception("retrain request failed")
            return redirect(f"retrain request failed: {type(e).__name__}: {e}")
        return redirect(f"retrain requested: trigger {trigger_id} (the launcher queues its run)")

    @app.post("/rollback")
    async def rollback(request: Request):
        fields = await form(request)
        if fields is None:
            return PlainTextResponse("cross-origin or oversized request refused", 403)
        to_version = fields.get("to_version") or ""
        if_current = fields.get("if_current") or None
        try:
            target = await _in_thread(dash.rollback, to_version, if_current)
        except CurrentChanged as e:
            return redirect(f"rollback not done: {e}")
        except ValueError as e:
            return redirect(f"rollback refused: {e}")
        return redirect(f"rolled back to {target} (was {if_current})")

    return app


async def _in_thread(fn, *args):
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m dashboard.app",
        description="Dashboard: training runs, model versions, quality; retrain and roll back.",
    )
    p.add_argument("--project", required=True, help="project of the retrain topic and BigQuery")
    p.add_argument("--bq_dataset", required=True)
    p.add_argument("--bq_project", help="project of the BigQuery dataset (default --project)")
    p.add_argument("--config", required=True, help="dataset config YAML/JSON")
    p.add_argument("--registry", required=True, help="model registry root (dir or gs://)")
    p.add_argument("--retrain_topic", required=True, help="projects/<p>/topics/<t>")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: localhost only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--refresh-seconds", type=int, default=15, help="page reload (0: never)")
    p.add_argument("--lookback-days", type=float, default=data.DEFAULT_LOOKBACK_DAYS)
    return p.parse_args(argv)


def build(args: argparse.Namespace) -> Dashboard:
    """The dashboard for parsed arguments (validated).

    Raises:
        ValueError: for a bad topic, port or lookback.
    """
    if not re.match(r"^projects/[^/]+/topics/[^/]+$", args.retrain_topic):
        raise ValueError("--retrain_topic must be projects/<project>/topics/<name>")
    if not 0 < args.port < 65536:
        raise ValueError(f"--port {args.port} is not a port number")
    if not args.lookback_days > 0 or args.refresh_seconds < 0:
        raise ValueError("--lookback-days must be positive and --refresh-seconds >= 0")
    from dataset.resources import bigquery_client

    config = load_config(args.config)
    bq_project = args.bq_project or args.project
    source = data.Source(
        bigquery_client(bq_project), bq_project, args.bq_dataset, config, args.lookback_days
    )
    return Dashboard(
        source,
        ModelRegistry(args.registry),
        args.retrain_topic,
        refresh_seconds=args.refresh_seconds,
    )


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = _parse_args(argv)
    try:
        dash = build(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import uvicorn

    print(f"dashboard: http://{args.host}:{args.port}/", flush=True)
    uvicorn.run(create_app(dash), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
