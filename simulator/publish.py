"""Command line: publish simulated or recorded events to Pub/Sub; export simulated data.

Usage::

    python -m simulator.publish simulate --config configs/traffic.yaml \\
        --topic projects/P/topics/T --rate 30 --duration 120 [--sensors 300] [--seed 7] \\
        [--day-seconds 600] [--day-origin EPOCH] [--drift-after SECONDS] \\
        [--malformed-fraction 0.02] [--late-fraction 0.0] [--late-seconds 60] \\
        [--duplicate-fraction 0.0] [--stats-file PATH] [--ids-file PATH]
    python -m simulator.publish replay FILE --config CONFIG --topic T [--rate 100] \\
        [--rebase-time] [--assume-utc] [--stats-file PATH] [--ids-file PATH]
    python -m simulator.publish export-history --config configs/traffic.yaml \\
        --out FILE.jsonl|FILE.csv --events N [--end-time ISO|EPOCH] [--rate 10] ...
    python -m simulator.publish export-ads --out data/ad_conversions_sample.jsonl \\
        [--impressions 300]

Times on the command line are epoch seconds or ISO-8601 with a zone. The
modules behind it: ``simulator.messages`` (event times, building and
malforming messages), ``simulator.records`` (reading and writing JSONL/CSV),
``simulator.pacing`` (pacing, stats file, progress), ``simulator.pubsub``
(the Pub/Sub sink), ``simulator.publisher`` (the simulate and replay loops)
and ``simulator.exports``. Exit codes: 0 ok, 1 publish failure, 2 bad input.
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from dataset.config import load_config
from dataset.times import parse_time_arg
from simulator.exports import export_ads, export_history
from simulator.messages import MALFORMED_KINDS
from simulator.publisher import InjectionOptions, run_replay, run_simulate
from simulator.pubsub import PublishError

logger = logging.getLogger(__name__)


def _number_type(description: str, ok: Callable[[float], bool]) -> Callable[[str], float]:
    """An argparse ``type`` that parses a float and checks it, naming what was expected."""

    def parse(value: str) -> float:
        try:
            f = float(value)
        except ValueError:
            f = math.nan
        if math.isnan(f) or not ok(f):
            raise argparse.ArgumentTypeError(f"expected {description}, got {value!r}")
        return f

    return parse


_fraction = _number_type("a number in [0, 1]", lambda f: 0.0 <= f <= 1.0)
_positive = _number_type("a positive number", lambda f: f > 0)


def _add_sim_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sensors", type=int, default=300, help="number of sensors (default 300)")
    p.add_argument("--seed", type=int, default=7, help="simulator seed (default 7)")
    p.add_argument(
        "--day-seconds",
        type=_positive,
        default=600.0,
        help="real seconds per simulated day (default 600)",
    )
    p.add_argument(
        "--day-origin",
        type=float,
        default=0.0,
        metavar="EPOCH_SECONDS",
        help="instant at which a simulated day starts at 00:00 (default 0: the epoch)",
    )
    p.add_argument(
        "--drift-after",
        type=float,
        default=None,
        metavar="SECONDS",
        help="start the road-works concept drift this many seconds after the start (simulate)"
        " or after the first exported reading (export-history); default: never",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulator.publish",
        description="Publish simulated or recorded events to Pub/Sub, or export simulated data.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="publish live traffic readings (event time = now)")
    p.add_argument("--config", required=True, help="dataset config, e.g. configs/traffic.yaml")
    p.add_argument("--topic", required=True, help="projects/<project>/topics/<topic>")
    p.add_argument("--rate", type=_positive, default=30.0, help="messages per second (default 30)")
    p.add_argument(
        "--duration", type=_positive, default=None, help="seconds to run (default: until Ctrl-C)"
    )
    _add_sim_args(p)
    p.add_argument(
        "--malformed-fraction",
        type=_fraction,
        default=0.02,
        help=f"fraction of deliberately invalid messages (default 0.02; kinds: "
        f"{', '.join(MALFORMED_KINDS)})",
    )
    p.add_argument(
        "--late-fraction",
        type=_fraction,
        default=0.0,
        help="fraction of readings sent with an event time --late-seconds in the past",
    )
    p.add_argument("--late-seconds", type=_positive, default=60.0, help="default 60")
    p.add_argument(
        "--duplicate-fraction",
        type=_fraction,
        default=0.0,
        help="fraction of extra copies of already-sent messages (same id attribute)",
    )
    p.add_argument("--stats-file", default=None, help="JSON stats, rewritten every ~2 s")
    p.add_argument("--ids-file", default=None, help="append each published message id to this file")

    p = sub.add_parser("replay", help="replay a JSONL or CSV file in file order")
    p.add_argument("file", help="a .jsonl/.ndjson/.json (JSON Lines) or .csv file")
    p.add_argument("--config", required=True, help="dataset config describing the file's rows")
    p.add_argument("--topic", required=True, help="projects/<project>/topics/<topic>")
    p.add_argument(
        "--rate", type=_positive, default=100.0, help="messages per second (default 100)"
    )
    p.add_argument(
        "--rebase-time",
        action="store_true",
        help="rewrite each event time (payload and attribute) to the time it is published",
    )
    p.add_argument(
        "--assume-utc",
        action="store_true",
        help="take ISO-8601 event times without a zone as UTC (default: skip such rows, "
        "which the pipeline would dead-letter, with reason time_without_zone)",
    )
    p.add_argument("--stats-file", default=None, help="JSON stats, rewritten every ~2 s")
    p.add_argument("--ids-file", default=None, help="append each published message id to this file")

    p = sub.add_parser("export-history", help="write simulated past traffic readings to a file")
    p.add_argument("--config", required=True, help="dataset config, e.g. configs/traffic.yaml")
    p.add_argument("--out", required=True, help="output .jsonl or .csv")
    p.add_argument("--events", type=int, required=True, help="number of readings")
    p.add_argument(
        "--end-time",
        default=None,
        help="ISO-8601 or epoch seconds the history ends at (default now)",
    )
    p.add_argument(
        "--rate", type=_positive, default=10.0, help="readings per second of history (default 10)"
    )
    _add_sim_args(p)

    p = sub.add_parser("export-ads", help="write sample ad impressions and conversions")
    p.add_argument(
        "--out", default="data/ad_conversions_sample.jsonl", help="output .jsonl or .csv"
    )
    p.add_argument("--impressions", type=int, default=300)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--ads", type=int, default=30)
    p.add_argument("--start-time", default="2024-01-01T00:00:00Z", help="ISO-8601 or epoch seconds")
    p.add_argument("--rate", type=_positive, default=1.0, help="impressions per second")
    return parser


class _StopOnSignal:
    """Sets ``stop`` on SIGINT/SIGTERM (a second signal aborts); restores handlers on exit."""

    def __init__(self, stop: threading.Event):
        self.stop = stop
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.stop.is_set():
            raise KeyboardInterrupt
        logger.info("signal %d: finishing (flush, final stats); again to abort", signum)
        self.stop.set()

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0 ok, 1 publish failure, 2 bad input)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "simulate":
            config = load_config(args.config)
            stop = threading.Event()
            with _StopOnSignal(stop):
                run_simulate(
                    config,
                    args.topic,
                    args.rate,
                    args.duration,
                    n_sensors=args.sensors,
                    seed=args.seed,
                    day_seconds=args.day_seconds,
                    day_origin=args.day_origin,
                    drift_after=args.drift_after,
                    injection=InjectionOptions(
                        malformed_fraction=args.malformed_fraction,
                        late_fraction=args.late_fraction,
                        late_seconds=args.late_seconds,
                        duplicate_fraction=args.duplicate_fraction,
                    ),
                    stats_file=args.stats_file,
                    ids_file=args.ids_file,
                    stop=stop,
                )
        elif args.command == "replay":
            config = load_config(args.config)
            stop = threading.Event()
            with _StopOnSignal(stop):
                run_replay(
                    args.file,
                    config,
                    args.topic,
                    args.rate,
                    rebase_time=args.rebase_time,
                    assume_utc=args.assume_utc,
                    stats_file=args.stats_file,
                    ids_file=args.ids_file,
                    stop=stop,
                )
        elif args.command == "export-history":
            config = load_config(args.config)
            end = parse_time_arg(args.end_time) if args.end_time else time.time()
            export_history(
                config,
                args.out,
                args.events,
                end,
                rate=args.rate,
                n_sensors=args.sensors,
                seed=args.seed,
                day_seconds=args.day_seconds,
                day_origin=args.day_origin,
                drift_after=args.drift_after,
            )
        elif args.command == "export-ads":
            start_millis = int(round(parse_time_arg(args.start_time) * 1000))
            export_ads(
                args.out,
                args.impressions,
                seed=args.seed,
                n_ads=args.ads,
                start_millis=start_millis,
                rate=args.rate,
            )
    except ValueError as e:
        logger.error("%s", e)
        return 2
    except PublishError as e:
        logger.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
