"""Local entry point: ``python -m local.pipeline [pipelines.main options]``.

Applies the local runner acceleration (``local.accelerate``) and then runs
``pipelines.main.run`` with the remaining arguments, unchanged. For the local
DirectRunner only; Dataflow launches ``pipelines.main`` directly.

Options of its own (removed before ``pipelines.main`` sees the rest):
    --pubsub_pull_size N   Pub/Sub messages per pull (default: env
                           LOCAL_PUBSUB_PULL_SIZE, else 1000).
    --no_accelerate        run the stock runner (same as LOCAL_ACCELERATE=0).
Env LOCAL_ACCELERATE_PATCHES=name,... applies only the named patches.
Env LOCAL_PROFILE=PREFIX profiles every thread (cProfile; the runner works on
its own threads) and writes PREFIX.<n>.prof files when the process is stopped
(SIGTERM/SIGINT); read them with ``pstats.Stats(*glob('PREFIX.*.prof'))``.
Env LOCAL_MEMORY_TRACE=SECONDS samples memory (RSS, tracemalloc growth by
allocation site, glibc heap, gc object counts) into the run's state dir
(``local.memory_trace``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from local import accelerate, memory_trace

_LOG = logging.getLogger(__name__)


def split_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """This wrapper's options, and the arguments left for ``pipelines.main``."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--pubsub_pull_size", type=int, default=None)
    parser.add_argument("--no_accelerate", action="store_true")
    return parser.parse_known_args(argv)


def profile_all_threads(prefix: str) -> None:
    """Profiles the main thread and every thread started later; dumps on stop."""
    import cProfile
    import marshal
    import signal
    import threading

    profiles: list[cProfile.Profile] = []

    def start_profiler(_frame, _event, _arg):
        # threading.setprofile runs this first in every new thread (even Thread
        # subclasses with their own run()); cProfile then replaces it there.
        profiler = cProfile.Profile()
        profiles.append(profiler)
        profiler.enable()

    threading.setprofile(start_profiler)
    main_profiler = cProfile.Profile()
    profiles.append(main_profiler)

    def dump(signum, _frame):
        for i, profiler in enumerate(list(profiles)):
            profiler.snapshot_stats()  # no disable(): it would act on this thread only
            with open(f"{prefix}.{i}.prof", "wb") as f:
                marshal.dump(profiler.stats, f)
        _LOG.info("profiles written to %s.*.prof", prefix)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, dump)
    signal.signal(signal.SIGINT, dump)
    main_profiler.enable()


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
    try:
        memory_trace.start_from_env()
    except ValueError as e:
        sys.exit(f"error: {e}")
    if os.environ.get("LOCAL_PROFILE"):
        profile_all_threads(os.environ["LOCAL_PROFILE"])
    from pipelines.main import run

    run(rest)


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    main()
