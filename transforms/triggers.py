"""Retraining triggers: decide, inside the stream, when enough new data landed.

Newly landed training examples are counted in the global window, in panes
that fire every ``count_batch_size`` examples or ``COUNT_PANE_SECONDS`` of
processing time, whichever comes first (distinct ``example_id`` per pane, so
a replayed example is not counted twice there; the upstream message-id dedup
covers redeliveries). The global window never closes, so no example is ever
late here: a backlog, replayed far behind the watermark, still counts. A
single stateful DoFn per dataset keeps the running count and decides:

* ``new_data``: ``min_new_examples`` new examples since the last trigger;
* ``schedule``: data is flowing and ``max_interval_seconds`` passed since the
  last trigger;
* ``quality``: a progressive-validation window scored at least
  ``quality_min_examples`` predictions with accuracy below ``quality_floor``.

Debounce: triggers are at least ``min_interval_seconds`` apart. All times are
event times (the newest example counted), so decisions do not depend on when
a backlog is worked off.

Trigger ids are ``<dataset>-<epoch>-<sequence>``. The epoch is chosen once per
launch of the pipeline (UTC launch time and a random suffix) and travels with
the trigger state, so one crossing has one id whatever is retried, and ids
never repeat across restarts: the sequence is rebuilt from the
``retrain_triggers`` table (``initial_state_from_bigquery``), and a trigger
whose row BigQuery refused but whose message went out would otherwise have
its id reused, and the launcher would ack the next crossing as a duplicate.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import secrets
from typing import Any

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.metrics import Metrics
from apache_beam.transforms import window
from apache_beam.transforms.trigger import (
    AccumulationMode,
    AfterAny,
    AfterCount,
    AfterProcessingTime,
    AfterWatermark,
)
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from dataset.config import DatasetConfig, RetrainingPolicy
from dataset.times import parse_event_time, utc_iso

NAMESPACE = "triggers"
# A count pane fires at the latest this many seconds (processing time) after
# its first example...
COUNT_PANE_SECONDS = 10
# ...or after this many examples (see ``count_batch_size``), whichever is first.
MAX_COUNT_BATCH = 1000


def new_epoch(now: float | None = None) -> str:
    """A launch epoch for trigger ids: UTC launch time plus a random suffix."""
    if now is None:
        now = dt.datetime.now(dt.UTC).timestamp()
    stamp = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y%m%dT%H%M%S")
    return f"{stamp}{secrets.token_hex(2)}"


def count_batch_size(policy: RetrainingPolicy) -> int:
    """Examples per count pane: a tenth of ``min_new_examples``, 1 to ``MAX_COUNT_BATCH``."""
    return max(1, min(policy.min_new_examples // 10, MAX_COUNT_BATCH))


@dataclasses.dataclass
class TriggerState:
    """What the trigger remembers between elements (and across restarts)."""

    sequence: int = 0
    epoch: str = ""
    pending: int = 0
    total: int = 0
    pending_start: float | None = None
    pending_end: float | None = None
    last_trigger_time: float | None = None
    quality_alarm: dict | None = None


def add_examples(state: TriggerState, count: int, start: float, end: float) -> None:
    state.pending += count
    state.total += count
    state.pending_start = start if state.pending_start is None else min(state.pending_start, start)
    state.pending_end = end if state.pending_end is None else max(state.pending_end, end)


def decide(state: TriggerState, policy: RetrainingPolicy) -> str | None:
    """The reason to trigger now, or None. Pure: the heart of the trigger policy."""
    if state.pending == 0 or state.pending_end is None:
        return None
    last = state.last_trigger_time
    if last is not None and state.pending_end - last < policy.min_interval_seconds:
        return None  # debounce
    if state.pending >= policy.min_new_examples:
        return "new_data"
    if state.quality_alarm is not None and state.pending >= policy.quality_min_examples:
        return "quality"
    if (
        policy.max_interval_seconds is not None
        and last is not None
        and state.pending_end - last >= policy.max_interval_seconds
    ):
        return "schedule"
    return None


def fire(state: TriggerState, dataset: str, reason: str, now: float) -> dict[str, Any]:
    """Builds the trigger and resets the pending counters.

    The id is ``<dataset>-<epoch>-<sequence>`` (``<dataset>-<sequence>`` for a
    state without an epoch: ``DecideRetraining`` always gives it one).
    """
    state.sequence += 1
    prefix = f"{dataset}-{state.epoch}" if state.epoch else dataset
    out = {
        "trigger_id": f"{prefix}-{state.sequence:06d}",
        "dataset": dataset,
        "reason": reason,
        "sequence": state.sequence,
        "new_examples": state.pending,
        "total_examples": state.total,
        "event_time_start": utc_iso(state.pending_start),
        "event_time_end": utc_iso(state.pending_end),
        "details": json.dumps(state.quality_alarm) if reason == "quality" else None,
        "created_at": utc_iso(now),
    }
    state.last_trigger_time = state.pending_end
    state.pending = 0
    state.pending_start = state.pending_end = None
    state.quality_alarm = None
    return out


class DistinctCountFn(beam.CombineFn):
    """(example_id, event_time) -> (distinct count, min time, max time)."""

    def create_accumulator(self):
        return {}

    def add_input(self, acc, element):
        example_id, t = element
        acc[example_id] = t
        return acc

    def merge_accumulators(self, accs):
        out = {}
        for acc in accs:
            out.update(acc)
        return out

    def extract_output(self, acc):
        if not acc:
            return (0, None, None)
        times = acc.values()
        return (len(acc), min(times), max(times))


class _RetrainTriggerFn(beam.DoFn):
    """Keyed by dataset: ('examples', (n, start, end)) and ('quality', row) inputs."""

    STATE = ReadModifyWriteStateSpec("trigger_state", PickleCoder())

    def __init__(self, config: DatasetConfig, initial: TriggerState):
        self._config = config
        self._initial = initial
        self._triggers = Metrics.counter(NAMESPACE, "retrain_triggers")
        self._counted = Metrics.counter(NAMESPACE, "examples_counted")
        self._alarms = Metrics.counter(NAMESPACE, "quality_alarms")

    def process(self, element, state_param=beam.DoFn.StateParam(STATE)):
        _, (kind, value) = element
        state = state_param.read() or dataclasses.replace(self._initial)
        if kind == "examples":
            count, start, end = value
            if count:
                self._counted.inc(count)
                add_examples(state, count, start, end)
        elif state.quality_alarm is None:
            self._alarms.inc()
            state.quality_alarm = value
        reason = decide(state, self._config.retraining)
        if reason is not None:
            self._triggers.inc()
            Metrics.counter(NAMESPACE, f"retrain_triggers_{reason}").inc()
            yield fire(state, self._config.name, reason, dt.datetime.now(dt.UTC).timestamp())
        state_param.write(state)


def quality_alarm(row: dict, policy: RetrainingPolicy) -> bool:
    """Whether a quality row is below the floor with enough scored examples."""
    if policy.quality_floor is None or row.get("accuracy") is None:
        return False
    return row["examples"] >= policy.quality_min_examples and row["accuracy"] < policy.quality_floor


class DecideRetraining(beam.PTransform):
    """Training example rows -> trigger dicts (``quality``: optional quality rows)."""

    def __init__(
        self,
        config: DatasetConfig,
        initial: TriggerState | None = None,
        quality: beam.PCollection | None = None,
    ):
        super().__init__()
        initial = initial or TriggerState()
        if not initial.epoch:
            initial = dataclasses.replace(initial, epoch=new_epoch())
        self._config = config
        self._initial = initial
        self._quality = quality

    def expand(self, examples):
        quality = self._quality
        cfg = self._config
        counts = (
            examples
            | "ExampleIdAndTime"
            >> beam.Map(lambda r: (r["example_id"], parse_event_time(r["event_time"], "iso8601")))
            | "CountWindow"
            >> beam.WindowInto(
                window.GlobalWindows(),
                trigger=AfterWatermark(
                    early=AfterAny(
                        AfterCount(count_batch_size(cfg.retraining)),
                        AfterProcessingTime(COUNT_PANE_SECONDS),
                    )
                ),
                accumulation_mode=AccumulationMode.DISCARDING,
            )
            | "CountDistinctExamples" >> beam.CombineGlobally(DistinctCountFn()).without_defaults()
            | "GlobalCounts" >> beam.WindowInto(window.GlobalWindows())
            | "TagCounts" >> beam.Map(lambda c, name: (name, ("examples", c)), cfg.name)
        )
        inputs = [counts]
        if quality is not None:
            policy = cfg.retraining
            inputs.append(
                quality
                | "QualityBelowFloor" >> beam.Filter(quality_alarm, policy)
                | "TagQuality" >> beam.Map(lambda q, name: (name, ("quality", q)), cfg.name)
            )
        return (
            inputs
            | "FlattenTriggerInputs" >> beam.Flatten()
            | "RetrainTrigger" >> beam.ParDo(_RetrainTriggerFn(cfg, self._initial))
        )


def trigger_message(trigger: dict) -> PubsubMessage:
    """The Pub/Sub message for a trigger (the launcher's input)."""
    return PubsubMessage(
        json.dumps(trigger, sort_keys=True).encode("utf-8"), {"trigger_id": trigger["trigger_id"]}
    )


def initial_state_from_bigquery(client, project: str, dataset: str, config: DatasetConfig):
    """Rebuilds the trigger state after a restart from the BigQuery tables.

    Sequence and last trigger time come from ``retrain_triggers``; the pending
    count is the number of training examples ingested after the last trigger.
    The state gets a new epoch, so its trigger ids cannot repeat an earlier
    launch's, even one whose last trigger row never reached the table.
    """
    from google.api_core.exceptions import NotFound

    t = config.tables
    state = TriggerState(epoch=new_epoch())
    try:
        last = list(
            client.query(
                f"SELECT sequence, event_time_end, created_at FROM "
                f"`{project}.{dataset}.{t.retrain_triggers}` "
                # The pipeline's own triggers (not the dashboard's or the file trigger's).
                f"WHERE reason IN ('new_data', 'schedule', 'quality') "
                f"ORDER BY sequence DESC LIMIT 1"
            ).result()
        )
        since = ""
        if last:
            state.sequence = int(last[0]["sequence"])
            state.last_trigger_time = last[0]["event_time_end"].timestamp()
            since = f"WHERE ingested_at > TIMESTAMP('{last[0]['created_at'].isoformat()}')"
        pending = list(
            client.query(
                f"SELECT COUNT(*) AS n, MIN(event_time) AS s, MAX(event_time) AS e, "
                f"(SELECT COUNT(*) FROM `{project}.{dataset}.{t.training_examples}`) AS total "
                f"FROM `{project}.{dataset}.{t.training_examples}` {since}"
            ).result()
        )
    except NotFound:
        return state
    row = pending[0]
    state.total = int(row["total"] or 0)
    if row["n"]:
        state.pending = int(row["n"])
        state.pending_start = row["s"].timestamp()
        state.pending_end = row["e"].timestamp()
    return state
