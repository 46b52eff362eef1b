"""Publish poison messages into a running pipeline's input topic (a drill).

Each kind once: an event-time attribute that does not parse, a NaN event time
(attribute and payload), non-UTF-8 bytes. The pipeline must dead-letter them
and keep running. With ``--ids-file`` (run_local.sh's
``<state dir>/published-ids.txt``) their ids are appended, so the run summary's
``unaccounted`` covers them too.

    PUBSUB_EMULATOR_HOST=127.0.0.1:8085 python -m local.poison \\
        --topic projects/local-project/topics/traffic-events --config configs/traffic.yaml \\
        --ids-file .local/run/published-ids.txt
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Sequence

from dataset.config import DatasetConfig, load_config
from dataset.times import utc_iso


def poison_messages(config: DatasetConfig, now: float) -> list[tuple[str, bytes, dict[str, str]]]:
    """(kind, payload bytes, attributes) of each poison kind, with fresh message ids."""
    tag = uuid.uuid4().hex[:8]
    attr, field = config.event_time_attribute, config.event_time_field
    key = f'"{config.key_field}": "poison"'

    def ids(kind: str) -> str:
        return f"poison-{kind}-{tag}"

    return [
        (
            "unparseable-event-time-attribute",
            f'{{{key}, "{field}": "{utc_iso(now)}"}}'.encode(),
            {attr: "not-a-time", config.id_attribute: ids("bad-attr")},
        ),
        (
            "nan-event-time",
            f'{{{key}, "{field}": NaN}}'.encode(),
            {attr: "NaN", config.id_attribute: ids("nan")},
        ),
        (
            "non-utf8-bytes",
            b"\xff\xfe\xfd not utf-8",
            {attr: utc_iso(now), config.id_attribute: ids("non-utf8")},
        ),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Publishes the poison messages; prints their ids; exit 0 once all are acked."""
    parser = argparse.ArgumentParser(prog="python -m local.poison", description=__doc__)
    parser.add_argument("--topic", required=True, help="projects/<project>/topics/<topic>")
    parser.add_argument("--config", required=True, help="the pipeline's dataset config")
    parser.add_argument("--ids-file", help="append the published ids here (reconciliation)")
    args = parser.parse_args(argv)
    from google.cloud import pubsub_v1

    config = load_config(args.config)
    publisher = pubsub_v1.PublisherClient()
    messages = poison_messages(config, time.time())
    futures = [publisher.publish(args.topic, data, **attrs) for _, data, attrs in messages]
    for future in futures:
        future.result(timeout=60)
    ids = [attrs[config.id_attribute] for _, _, attrs in messages]
    if args.ids_file:
        with open(args.ids_file, "a", encoding="utf-8") as f:
            f.writelines(f"{i}\n" for i in ids)
    for (kind, _, _), message_id in zip(messages, ids, strict=True):
        print(f"{kind}: {message_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
