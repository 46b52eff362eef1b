"""The publishing loops: live simulated traffic (``run_simulate``) and file replay (``run_replay``).

Both go through one ``PublishLoop``: ``PublishLoop.send`` is the single place
where a message is published and counted, ``tick`` polls the sink and refreshes
progress and the stats file, ``sleep_until`` paces. The Pub/Sub client, clocks,
files and signals stay out of the pure modules (``messages``, ``records``,
``pacing``).

Replayed event times follow the pipeline's rules (``dataset.times``): a row
whose time is missing or unparseable is skipped with a reason; an ISO-8601
time without a zone is skipped as ``time_without_zone`` (the pipeline would
dead-letter it) unless ``assume_utc`` (``--assume-utc``: taken as UTC, and the
payload is rewritten with the zone) or ``rebase_time`` (the time is replaced
by the publish time anyway).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterator

from dataset.config import DatasetConfig
from dataset.times import format_event_time, has_zone
from simulator.messages import (
    EventTimeProblem,
    OutMessage,
    available_malformed_kinds,
    build_message,
    check_config_matches,
    event_time_of,
    new_message_id,
    rebase_record,
    with_event_time,
)
from simulator.pacing import Progress, PublishStats, StatsWriter, due_time
from simulator.pubsub import Sink, connect
from simulator.records import read_records
from simulator.traffic import TrafficSimulator

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class InjectionOptions:
    """Fractions of deliberately bad, late and duplicated messages."""

    malformed_fraction: float = 0.0
    late_fraction: float = 0.0
    late_seconds: float = 60.0
    duplicate_fraction: float = 0.0

    def validate(self) -> None:
        for name in ("malformed_fraction", "late_fraction", "duplicate_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} must be between 0 and 1, got {value}")
        if self.late_seconds <= 0:
            raise ValueError(f"--late-seconds must be positive, got {self.late_seconds}")


class PublishLoop:
    """Loop plumbing shared by simulate and replay: sink, stats, progress, stop flag."""

    def __init__(
        self,
        sink: Sink,
        stats: PublishStats,
        stats_writer: StatsWriter,
        progress: Progress,
        stop: threading.Event,
        ids_file: str | None = None,
    ):
        self.sink = sink
        self.stats = stats
        self.writer = stats_writer
        self.progress = progress
        self.stop = stop
        # One published message id per line (duplicates not repeated), for reconciliation.
        self.ids = open(ids_file, "a", encoding="utf-8", buffering=1) if ids_file else None  # noqa: SIM115

    def send(self, msg: OutMessage, duplicate: bool = False) -> None:
        """Publishes one message and counts it (the only place either happens)."""
        self.sink.publish(msg)
        self.stats.record(msg, duplicate=duplicate)
        if self.ids is not None and not duplicate:
            self.ids.write(f"{msg.message_id}\n")

    def tick(self) -> None:
        self.sink.poll()
        self.progress.update(self.stats)
        self.writer.maybe_write(self.stats)

    def sleep_until(self, when: float, clock: Callable[[], float], max_step: float = 0.1) -> None:
        """Sleeps until ``when`` (or the stop flag), ticking at least every ``max_step`` s."""
        while not self.stop.is_set():
            remaining = when - clock()
            if remaining <= 0:
                return
            self.stop.wait(min(remaining, max_step))
            self.tick()

    def finish(self, flush_timeout: float) -> None:
        try:
            self.sink.flush(flush_timeout)
        finally:
            self.writer.write(self.stats, running=False)
            self.progress.finish(self.stats)
            if self.ids is not None:
                self.ids.close()


@contextlib.contextmanager
def _publishing(
    mode: str,
    topic: str,
    sink: Sink | None,
    stop: threading.Event,
    stats_file: str | None,
    ids_file: str | None,
    total: int | None,
    progress_stream,
    clock: Callable[[], float],
) -> Iterator[PublishLoop]:
    """A ``PublishLoop`` on ``sink`` (None: a new connection to ``topic``, closed at the end).

    Its stats start after connecting, so the first events are not published in
    a burst; the stats file is written at the start and, with the sink flushed,
    at the end.
    """
    own_sink = sink is None
    if sink is None:
        sink = connect(topic)
    stats = PublishStats(mode=mode, topic=topic, started_at=clock())
    runner = PublishLoop(
        sink,
        stats,
        StatsWriter(stats_file, clock=clock),
        Progress(total, progress_stream, clock=clock),
        stop,
        ids_file,
    )
    try:
        runner.writer.write(stats, running=True)
        yield runner
    finally:
        try:
            runner.finish(flush_timeout=60.0)
        finally:
            if own_sink:
                sink.close()


def run_simulate(
    config: DatasetConfig,
    topic: str,
    rate: float,
    duration: float | None,
    *,
    n_sensors: int = 300,
    seed: int = 7,
    day_seconds: float = 600.0,
    day_origin: float = 0.0,
    drift_after: float | None = None,
    injection: InjectionOptions | None = None,
    stats_file: str | None = None,
    ids_file: str | None = None,
    sink: Sink | None = None,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.time,
    progress_stream=None,
) -> PublishStats:
    """Publishes live traffic readings with event time "now" at ``rate`` per second.

    Runs for ``duration`` seconds (None: until ``stop`` is set). Returns the stats,
    which are also written to ``stats_file`` every ~2 s and at the end.

    Raises:
        ValueError: bad arguments or a config that does not fit the simulator.
        PublishError: the topic is missing, Pub/Sub is unreachable or a publish failed.
    """
    if rate <= 0:
        raise ValueError(f"--rate must be positive (messages per second), got {rate}")
    if duration is not None and duration <= 0:
        raise ValueError(f"--duration must be positive seconds, got {duration}")
    injection = injection or InjectionOptions()
    injection.validate()

    def make_sim(start_time: float) -> TrafficSimulator:
        return TrafficSimulator(
            n_sensors=n_sensors,
            seed=seed,
            day_seconds=day_seconds,
            drift_after_seconds=drift_after,
            start_time=start_time,
            day_origin=day_origin,
        )

    probe = make_sim(0.0)  # validates the arguments before connecting
    check_config_matches(config, probe.reading(0, clock()), "the traffic simulator's readings")
    kinds = available_malformed_kinds(config)
    stop = stop or threading.Event()
    total = int(rate * duration) if duration else None
    rng = random.Random(f"simulator.publish/{seed}")
    recent: collections.deque[OutMessage] = collections.deque(maxlen=1000)
    logger.info(
        "simulating %d sensors at %.1f msg/s to %s for %s (drift %s)",
        n_sensors,
        rate,
        topic,
        f"{duration:g}s" if duration else "until stopped",
        f"after {drift_after:g}s" if drift_after is not None else "never",
    )
    with _publishing(
        "simulate", topic, sink, stop, stats_file, ids_file, total, progress_stream, clock
    ) as runner:
        stats = runner.stats
        start = stats.started_at
        sim = make_sim(start)  # the drift is scheduled from here
        end = start + duration if duration else math.inf
        cursor = start
        while not stop.is_set() and cursor < end:
            upto = min(clock(), end)
            for k, t in sim.grid(cursor, upto, rate):
                late = rng.random() < injection.late_fraction
                event_time = t - injection.late_seconds if late else t
                record = with_event_time(sim.reading(k, event_time), config, event_time)
                kind = rng.choice(kinds) if rng.random() < injection.malformed_fraction else None
                msg = build_message(
                    record,
                    config,
                    event_time,
                    new_message_id(),
                    malformed_kind=kind,
                    rng=rng,
                    late=late,
                )
                runner.send(msg)
                recent.append(msg)
                if rng.random() < injection.duplicate_fraction:
                    runner.send(rng.choice(recent), duplicate=True)
            cursor = max(cursor, upto)
            runner.tick()
            if cursor < end:
                next_t = math.ceil(cursor * rate) / rate
                runner.sleep_until(min(max(next_t, cursor + 0.001), end), clock, max_step=0.1)
    logger.info("simulate finished: %s", _summary(stats))
    return stats


def run_replay(
    path: str,
    config: DatasetConfig,
    topic: str,
    rate: float = 100.0,
    *,
    rebase_time: bool = False,
    assume_utc: bool = False,
    stats_file: str | None = None,
    ids_file: str | None = None,
    sink: Sink | None = None,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.time,
    progress_stream=None,
) -> PublishStats:
    """Replays a JSONL or CSV file to ``topic`` in file order at ``rate`` messages/s.

    Rows without a usable event time (or that are not JSON objects) are
    skipped, counted in the stats (``skipped_by_reason``: ``invalid_json``,
    ``not_an_object``, ``missing_event_time``, ``bad_event_time``,
    ``time_without_zone``) and reported at the end. With ``rebase_time`` each
    record's event time (payload and attribute) becomes the wall-clock time it
    is published; with ``assume_utc`` an ISO-8601 time without a zone is taken
    as UTC and written back with one.

    Raises:
        ValueError: unknown file type, missing file, bad rate.
        PublishError: the topic is missing, Pub/Sub is unreachable or a publish failed.
    """
    if rate <= 0:
        raise ValueError(f"--rate must be positive (messages per second), got {rate}")
    records = read_records(path, config)  # validates the file type before connecting
    stop = stop or threading.Event()
    index = 0
    last_rebased = -math.inf
    reported = 0
    warned_old = False
    with _publishing(
        "replay", topic, sink, stop, stats_file, ids_file, None, progress_stream, clock
    ) as runner:
        stats = runner.stats
        start = stats.started_at
        for line_no, record, problem in records:
            if stop.is_set():
                break
            if record is None:
                stats.skip(problem)
                reported = _report_skip(path, line_no, problem, reported)
                continue
            try:
                event_time = event_time_of(record, config, assume_utc=assume_utc or rebase_time)
            except EventTimeProblem as e:
                stats.skip(e.reason)
                reported = _report_skip(path, line_no, f"{e.reason}: {e}", reported)
                continue
            runner.sleep_until(due_time(start, index, rate), clock)
            if stop.is_set():
                break
            if rebase_time:
                event_time = max(clock(), last_rebased)
                last_rebased = event_time
                record = rebase_record(record, config, event_time)
            elif not warned_old and event_time < clock() - 3600:
                warned_old = True
                logger.warning(
                    "%s:%d: event time %s is over an hour old; a runner whose watermark "
                    "follows the wall clock will drop it as late (use --rebase-time)",
                    path,
                    line_no,
                    format_event_time(event_time, "iso8601"),
                )
            if assume_utc and not rebase_time and _zone_missing(record, config):
                record = with_event_time(record, config, event_time)  # now with its zone
            runner.send(build_message(record, config, event_time, new_message_id()))
            index += 1
            runner.tick()
    if stats.skipped_rows:
        logger.warning(
            "%s: skipped %d rows not publishable: %s",
            path,
            stats.skipped_rows,
            stats.skipped_by_reason,
        )
    logger.info("replay finished: %s", _summary(stats))
    return stats


def _zone_missing(record: dict, config: DatasetConfig) -> bool:
    value = record.get(config.event_time_field)
    return isinstance(value, str) and has_zone(value) is False


def _report_skip(path: str, line_no: int, problem: str, reported: int) -> int:
    if reported < 10:
        logger.warning("%s:%d: skipped (%s)", path, line_no, problem)
    elif reported == 10:
        logger.warning("%s: more rows skipped; see the final count", path)
    return reported + 1


def _summary(stats: PublishStats) -> str:
    return (
        f"{stats.events_published} events ({stats.valid_published} valid, "
        f"{stats.malformed_published} malformed, {stats.late_published} late), "
        f"{stats.duplicates_published} duplicates, {stats.messages_sent} messages sent"
        + (f", {stats.skipped_rows} rows skipped" if stats.skipped_rows else "")
    )
