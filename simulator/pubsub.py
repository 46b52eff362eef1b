"""Pub/Sub: where messages go (a topic, or a list in tests) and how failures surface."""

from __future__ import annotations

import collections
import logging
import os
import re
import time
from typing import Protocol

from simulator.messages import OutMessage

logger = logging.getLogger(__name__)

_TOPIC_RE = re.compile(r"^projects/[^/]+/topics/[^/]+$")


class PublishError(RuntimeError):
    """Publishing failed: topic missing, Pub/Sub unreachable, or a publish failed."""


class Sink(Protocol):
    """Where messages go: Pub/Sub in production, a list in tests."""

    def publish(self, msg: OutMessage) -> None: ...

    def poll(self) -> None: ...

    def flush(self, timeout: float) -> None: ...


def _where() -> str:
    host = os.environ.get("PUBSUB_EMULATOR_HOST")
    return f"the Pub/Sub emulator at {host}" if host else "Pub/Sub (pubsub.googleapis.com)"


class PubSubSink:
    """Batch-publishes to a topic with google-cloud-pubsub; raises on any failed publish.

    Args:
        topic: ``projects/<project>/topics/<name>``.
        check_timeout: seconds to wait for the topic check at start.
        publish_timeout: overall seconds a publish may take, retries included.
    """

    def __init__(self, topic: str, check_timeout: float = 10.0, publish_timeout: float = 60.0):
        if not _TOPIC_RE.match(topic):
            raise ValueError(
                f"--topic must look like projects/<project>/topics/<name>, got {topic!r}"
            )
        from google.api_core import retry as retries
        from google.cloud import pubsub_v1

        self.topic = topic
        retry = retries.Retry(initial=0.1, maximum=5.0, multiplier=2.0, timeout=publish_timeout)
        try:
            self.client = pubsub_v1.PublisherClient(
                batch_settings=pubsub_v1.types.BatchSettings(
                    max_messages=500, max_bytes=2_000_000, max_latency=0.05
                ),
                publisher_options=pubsub_v1.types.PublisherOptions(
                    retry=retry, timeout=min(publish_timeout, 30.0)
                ),
            )
        except Exception as e:  # e.g. google.auth.exceptions.DefaultCredentialsError
            raise PublishError(f"cannot create a Pub/Sub publisher for {_where()}: {e}") from e
        self._check_timeout = check_timeout
        self._futures: collections.deque = collections.deque()

    def check_topic(self) -> None:
        """Fails fast with a clear message if the topic is missing or Pub/Sub unreachable."""
        from google.api_core import exceptions as gexc

        try:
            self.client.get_topic(
                request={"topic": self.topic}, timeout=self._check_timeout, retry=None
            )
        except gexc.NotFound:
            raise PublishError(
                f"topic {self.topic} does not exist on {_where()}; create it first, e.g. "
                f"`gcloud pubsub topics create {self.topic.rsplit('/', 1)[1]}` "
                "or PublisherClient().create_topic(name=...)"
            ) from None
        except (gexc.ServiceUnavailable, gexc.DeadlineExceeded, gexc.RetryError) as e:
            raise PublishError(
                f"cannot reach {_where()} within {self._check_timeout:.0f}s "
                f"({type(e).__name__}); is the emulator running and PUBSUB_EMULATOR_HOST "
                "right?"
            ) from None
        except gexc.GoogleAPICallError as e:
            raise PublishError(f"checking topic {self.topic} on {_where()} failed: {e}") from e

    def publish(self, msg: OutMessage) -> None:
        self._futures.append(self.client.publish(self.topic, msg.data, **msg.attributes))

    def poll(self) -> None:
        """Drops finished publishes; raises ``PublishError`` if one failed."""
        while self._futures and self._futures[0].done():
            self._raise_if_failed(self._futures.popleft(), timeout=0)

    def flush(self, timeout: float = 60.0) -> None:
        """Waits for every outstanding publish."""
        deadline = time.monotonic() + timeout
        while self._futures:
            remaining = max(deadline - time.monotonic(), 0.0)
            self._raise_if_failed(self._futures.popleft(), timeout=remaining)

    def _raise_if_failed(self, future, timeout: float) -> None:
        try:
            future.result(timeout=timeout)
        except Exception as e:
            raise PublishError(f"publishing to {self.topic} on {_where()} failed: {e!r}") from e

    def close(self) -> None:
        try:
            self.client.stop()
        except Exception:  # already stopped, or a failure we already reported
            logger.debug("publisher stop failed", exc_info=True)


def connect(topic: str) -> PubSubSink:
    """A ``PubSubSink`` whose topic was checked to exist."""
    sink = PubSubSink(topic)
    try:
        sink.check_topic()
    except BaseException:
        sink.close()
        raise
    return sink
