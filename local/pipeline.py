"""Local entry point: ``python -m local.pipeline [pipelines.main options]``.

Applies the local runner acceleration (``local.accelerate``) and then runs
``pipelines.main.run`` with the remaining arguments, unchanged. For the local
DirectRunner only; Dataflow launches ``pipelines.main`` directly.

Options of its own (removed before ``pipelines.main`` sees the rest):
    --pubsub_pull_size N   Pub/Sub messages per pull (default: env
                           LOCAL_PUBSUB_PULL_SIZE, else 1000).
    --no_accelerate        run the stock runner (same as LOCAL_ACCELERATE=0).
Env LOCAL_ACCELERATE_PATCHES=name,... applies only the named patches.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from local import accelerate

_LOG = logging.getLogger(__name__)


def split_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """This wrapper's options, and the arguments left for ``pipelines.main``."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--pubsub_pull_size", type=int, default=None)
    parser.add_argument("--no_accelerate", action="store_true")
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> None:
    own, rest = split_args(sys.argv[1:] if argv is None else argv)
    enabled = not own.no_accelerate and os.environ.get("LOCAL_ACCELERATE", "1") != "0"
    if enabled:
        try:
            accelerate.accelerate(own.pubsub_pull_size, accelerate.patches_from_env())
        except ValueError as e:
            sys.exit(f"error: {e}")
    else:
        _LOG.info("Local runner acceleration off: stock DirectRunner")
    from pipelines.main import run

    run(rest)


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    main()
