"""File-arrival trigger (the design documents' Cloud Functions architecture).

A file landing in a watched location is validated, loaded into the training
table, and starts ONE training run through the launcher::

    python -m trainer.file_trigger --watch DIR_OR_GS_PREFIX --config C --project P \\
        --bq_dataset D --retrain_topic projects/P/topics/T [--poll-seconds 5] [--once]

Files are JSON Lines, one event per line, in the shape the stream carries
(the simulator's payloads: key, event time, features and, for inline labels,
the label; for separate labels, the label lines join their feature lines by
``label.join_key`` within the file). Names starting with ``.`` or ending in
``.tmp`` are skipped: write the file elsewhere (or as ``*.tmp``) and rename it
into place, so a half-written file is never read.

For each file:

1. every line is checked with the pipeline's own validation
   (``transforms.validation.validate_payload``) and turned into a training row
   with the pipeline's ``transforms.labeling.training_row``; invalid lines
   (and lines without a label) become dead-letter rows, step ``FileTrigger``;
2. rows go to ``training_examples`` and ``dead_letter`` (BigQuery);
3. a ``file`` trigger is recorded in ``retrain_triggers`` and published to the
   retrain topic (``trainer.trigger_requests``), so the launcher records and
   runs it like the pipeline's triggers: one run, ``run-<trigger id>``;
4. the file is moved to ``processed/`` under the watched location.

Ids come from the file's content (SHA-256): example ids are
``<file id>:<line>`` and the trigger id ``<dataset>-file-<hash>``. A crash
before step 4 reloads the same file: the training reader keeps one row per
example id, and the launcher acks the repeated trigger as a duplicate, so a
file still gives one run.

In the cloud, ``handle_storage_event`` is the body of a Cloud Function (2nd
gen) behind an Eventarc ``google.cloud.storage.object.v1.finalized`` trigger
on the bucket; the polling loop here is the local stand-in (README).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dataset.config import DatasetConfig, load_config
from dataset.tables import training_schema
from trainer.runs import insert_typed_rows

logger = logging.getLogger(__name__)

STEP = "FileTrigger"
PROCESSED = "processed"
INSERT_BATCH = 500
API_TIMEOUT_SECONDS = 30.0


@dataclasses.dataclass
class LoadedFile:
    """What one file gave: training rows, dead-letter rows and its event-time range."""

    file_id: str
    digest: str
    rows: list[dict[str, Any]]
    dead_letters: list[dict[str, Any]]
    event_start: float | None = None
    event_end: float | None = None


def file_id_of(name: str, data: bytes) -> tuple[str, str]:
    """``(file id, sha256 hex)``: the base name (safe characters) and a content hash."""
    digest = hashlib.sha256(data).hexdigest()
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.basename(name))[:60] or "file"
    return f"{stem}-{digest[:12]}", digest


def parse_file(
    name: str, data: bytes, config: DatasetConfig, now: float | None = None
) -> LoadedFile:
    """Validates a JSON Lines file and builds training and dead-letter rows (pure).

    Args:
        name: the file's name (for ids and dead-letter attributes).
        data: its content.
        config: the dataset config.
        now: ingestion time (default: now).
    """
    from transforms.labeling import training_row
    from transforms.validation import RecordError, dead_letter_row, validate_payload

    if now is None:
        now = dt.datetime.now(dt.UTC).timestamp()
    file_id, digest = file_id_of(name, data)
    loaded = LoadedFile(file_id, digest, [], [])

    def reject(line: bytes, number: int, error: str) -> None:
        loaded.dead_letters.append(
            dead_letter_row(
                line,
                {"file": name, "line": str(number)},
                error,
                STEP,
                message_id=f"{file_id}:{number}",
                now=now,
            )
        )

    features: dict[str, tuple[bytes, int, dict]] = {}
    labels: dict[str, tuple[bytes, int, dict]] = {}
    records: list[tuple[bytes, int, dict, Any, float]] = []  # line, number, record, label, time
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            payload = json.loads(line.decode("utf-8"))
            record = validate_payload(payload, config, f"{file_id}:{number}")
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            reject(line, number, f"line is not JSON: {e}")
            continue
        except RecordError as e:
            reject(line, number, str(e))
            continue
        if config.label.source == "inline":
            if record["label"] is None:
                reject(line, number, f"label {config.label.field!r} is missing")
                continue
            records.append((line, number, record, record["label"], record["event_time"]))
            continue
        side = labels if record["kind"] == "label" else features
        if record["join_id"] in side:
            reject(line, number, f"second {record['kind']} line for {record['join_id']!r}")
            continue
        side[record["join_id"]] = (line, number, record)
    for join_id, (line, number, record) in features.items():
        if join_id in labels:
            label = labels.pop(join_id)[2]
            records.append((line, number, record, label["label"], label["event_time"]))
        elif config.label.negative_on_timeout:
            records.append((line, number, record, 0, record["event_time"]))
        else:
            reject(line, number, f"no label line for {join_id!r} in the file")
    for join_id, (line, number, _) in labels.items():
        reject(line, number, f"label for {join_id!r} has no feature line in the file")
    for _, _, record, label, label_time in sorted(records, key=lambda r: r[1]):
        row = training_row(config, record, label, label_time, "file", now=now)
        loaded.rows.append(row)
        t = record["event_time"]
        loaded.event_start = t if loaded.event_start is None else min(loaded.event_start, t)
        loaded.event_end = t if loaded.event_end is None else max(loaded.event_end, t)
    return loaded


# ------------------------------------------------------------------ watched locations


class LocalInbox:
    """A local directory; processed files move to ``<dir>/processed/``."""

    def __init__(self, root: str):
        self.root = Path(root)

    def uri(self, name: str) -> str:
        return str(self.root / name)

    def pending(self, settle_seconds: float = 1.0) -> list[str]:
        """Names of files ready to load, oldest first (unchanged for ``settle_seconds``)."""
        if not self.root.is_dir():
            return []
        now = time.time()
        ready = []
        for p in self.root.iterdir():
            if not p.is_file() or _skipped(p.name):
                continue
            mtime = p.stat().st_mtime
            if now - mtime >= settle_seconds:
                ready.append((mtime, p.name))
        return [name for _, name in sorted(ready)]

    def read(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    def mark_processed(self, name: str) -> str:
        target = self.root / PROCESSED
        target.mkdir(exist_ok=True)
        dest = target / name
        if dest.exists():  # the same name again: keep both
            dest = target / f"{name}.{int(time.time() * 1000)}"
        os.replace(self.root / name, dest)
        return str(dest)


class GcsInbox:
    """Objects under ``gs://bucket/prefix/``; processed ones move to ``prefix/processed/``."""

    def __init__(self, root: str, client=None):
        bucket, _, prefix = root[len("gs://") :].partition("/")
        if not bucket:
            raise ValueError(f"--watch {root!r}: expected gs://bucket[/prefix]")
        self.bucket_name = bucket
        self.prefix = prefix.strip("/")
        self._client = client
        self._bucket = None

    @property
    def bucket(self):
        if self._bucket is None:
            from google.cloud import storage

            self._bucket = (self._client or storage.Client()).bucket(self.bucket_name)
        return self._bucket

    def _name(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def uri(self, name: str) -> str:
        return f"gs://{self.bucket_name}/{self._name(name)}"

    def pending(self, settle_seconds: float = 0.0) -> list[str]:
        prefix = f"{self.prefix}/" if self.prefix else ""
        out = []
        for blob in self.bucket.list_blobs(prefix=prefix, delimiter="/"):
            name = blob.name[len(prefix) :]
            if name and not _skipped(name):
                out.append((blob.updated or dt.datetime.min.replace(tzinfo=dt.UTC), name))
        return [name for _, name in sorted(out)]

    def read(self, name: str) -> bytes:
        return self.bucket.blob(self._name(name)).download_as_bytes(timeout=API_TIMEOUT_SECONDS)

    def mark_processed(self, name: str) -> str:
        blob = self.bucket.blob(self._name(name))
        dest = self._name(f"{PROCESSED}/{name}")
        self.bucket.copy_blob(blob, self.bucket, dest, timeout=API_TIMEOUT_SECONDS)
        blob.delete(timeout=API_TIMEOUT_SECONDS)
        return f"gs://{self.bucket_name}/{dest}"


def _skipped(name: str) -> bool:
    return name.startswith(".") or name.endswith(".tmp") or "/" in name


def open_inbox(location: str):
    """The watched location: ``gs://bucket/prefix`` or a local directory."""
    if location.startswith("gs://"):
        return GcsInbox(location)
    if "://" in location:
        raise ValueError(f"--watch {location!r}: use a local directory or gs://bucket/prefix")
    return LocalInbox(location)


# ------------------------------------------------------------------ loading


class FileTrigger:
    """Loads files into BigQuery and requests one training run per file.

    Args:
        config: the dataset config.
        bq_client: a ``google.cloud.bigquery.Client``.
        publisher: a ``pubsub_v1.PublisherClient``.
        project: BigQuery project.
        bq_dataset: BigQuery dataset.
        retrain_topic: ``projects/<p>/topics/<t>`` (the launcher's topic).
    """

    def __init__(
        self, config: DatasetConfig, bq_client, publisher, project, bq_dataset, retrain_topic
    ):
        self.config = config
        self.client = bq_client
        self.publisher = publisher
        self.project = project
        self.bq_dataset = bq_dataset
        self.retrain_topic = retrain_topic
        self.stats = {"files": 0, "rows_loaded": 0, "dead_letters": 0, "runs_requested": 0}

    def _table(self, name: str) -> str:
        return f"{self.project}.{self.bq_dataset}.{name}"

    def load(self, uri: str, data: bytes) -> dict[str, Any]:
        """Validates and loads one file's content; requests a run. Returns a summary."""
        from trainer.trigger_requests import new_trigger, submit_trigger

        loaded = parse_file(uri, data, self.config)
        tables = self.config.tables
        schema = training_schema(self.config)
        for i in range(0, len(loaded.rows), INSERT_BATCH):
            insert_typed_rows(
                self.client,
                self._table(tables.training_examples),
                loaded.rows[i : i + INSERT_BATCH],
                schema,
            )
        if loaded.dead_letters:
            errors = self.client.insert_rows_json(
                self._table(tables.dead_letter), loaded.dead_letters, timeout=API_TIMEOUT_SECONDS
            )
            if errors:
                raise RuntimeError(f"dead-letter insert failed: {errors[:3]}")
        summary = {
            "file": uri,
            "rows": len(loaded.rows),
            "dead_letters": len(loaded.dead_letters),
            "trigger_id": None,
        }
        self.stats["files"] += 1
        self.stats["rows_loaded"] += len(loaded.rows)
        self.stats["dead_letters"] += len(loaded.dead_letters)
        if loaded.rows:
            trigger = new_trigger(
                self.config,
                "file",
                trigger_id=f"{self.config.name}-file-{loaded.digest[:20]}",
                new_examples=len(loaded.rows),
                event_time_start=loaded.event_start,
                event_time_end=loaded.event_end,
                details={"file": uri, "rows": len(loaded.rows), "invalid": summary["dead_letters"]},
            )
            submit_trigger(
                trigger,
                bq_client=self.client,
                publisher=self.publisher,
                project=self.project,
                bq_dataset=self.bq_dataset,
                config=self.config,
                topic=self.retrain_topic,
            )
            summary["trigger_id"] = trigger["trigger_id"]
            self.stats["runs_requested"] += 1
        logger.info(
            "loaded %s: %d rows, %d dead letters, trigger %s",
            uri,
            summary["rows"],
            summary["dead_letters"],
            summary["trigger_id"] or "none (no valid rows)",
        )
        return summary

    def process_pending(self, inbox, settle_seconds: float = 1.0) -> list[dict[str, Any]]:
        """Loads every ready file of ``inbox`` and marks it processed; returns the summaries."""
        done = []
        for name in inbox.pending(settle_seconds):
            summary = self.load(inbox.uri(name), inbox.read(name))
            summary["moved_to"] = inbox.mark_processed(name)
            done.append(summary)
        return done


def handle_storage_event(trigger: FileTrigger, event: Mapping[str, Any]) -> dict[str, Any] | None:
    """A Cloud Storage ``object.finalized`` event (``bucket``, ``name``): load that object.

    The body of the production Cloud Function; objects under ``processed/``
    (this trigger's own moves) and skipped names are ignored (None).
    """
    name = str(event["name"])
    base = name.rsplit("/", 1)[-1]
    if f"/{PROCESSED}/" in f"/{name}" or _skipped(base):
        return None
    prefix = name[: -len(base)].rstrip("/")
    inbox = GcsInbox(f"gs://{event['bucket']}/{prefix}" if prefix else f"gs://{event['bucket']}")
    summary = trigger.load(inbox.uri(base), inbox.read(base))
    summary["moved_to"] = inbox.mark_processed(base)
    return summary


# ------------------------------------------------------------------ CLI


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m trainer.file_trigger",
        description="Load files landing in a directory or gs:// prefix and start training.",
    )
    p.add_argument("--watch", required=True, help="local directory or gs://bucket/prefix")
    p.add_argument("--config", required=True)
    p.add_argument("--project", required=True)
    p.add_argument("--bq_dataset", required=True)
    p.add_argument("--bq_project", help="project of the BigQuery dataset (default --project)")
    p.add_argument("--retrain_topic", required=True, help="projects/<p>/topics/<t>")
    p.add_argument("--poll-seconds", type=float, default=5.0)
    p.add_argument("--settle-seconds", type=float, default=1.0, help="file unchanged this long")
    p.add_argument("--once", action="store_true", help="process what is there, then exit")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = _parse_args(argv)
    try:
        if not re.match(r"^projects/[^/]+/topics/[^/]+$", args.retrain_topic):
            raise ValueError("--retrain_topic must be projects/<project>/topics/<name>")
        if not args.poll_seconds > 0:
            raise ValueError("--poll-seconds must be positive")
        config = load_config(args.config)
        inbox = open_inbox(args.watch)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if isinstance(inbox, LocalInbox):
        inbox.root.mkdir(parents=True, exist_ok=True)
    from google.cloud import pubsub_v1

    from dataset.resources import bigquery_client

    bq_project = args.bq_project or args.project
    trigger = FileTrigger(
        config,
        bigquery_client(bq_project),
        pubsub_v1.PublisherClient(),
        bq_project,
        args.bq_dataset,
        args.retrain_topic,
    )
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    deadline = None if args.duration is None else time.monotonic() + args.duration
    logger.info("watching %s for %s files", args.watch, config.name)
    while not stopping:
        try:
            trigger.process_pending(inbox, 0.0 if args.once else args.settle_seconds)
        except Exception:  # a bad file or a BigQuery hiccup: logged, retried next poll
            logger.exception(
                "processing %s failed; retrying in %.0f s", args.watch, args.poll_seconds
            )
        if args.once or (deadline is not None and time.monotonic() >= deadline):
            break
        end = time.monotonic() + args.poll_seconds
        while not stopping and time.monotonic() < end:
            time.sleep(min(0.2, args.poll_seconds))
    print(json.dumps(trigger.stats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
