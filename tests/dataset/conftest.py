"""A Cloud Storage stand-in for config tests: gcp-storage-emulator, in process.

``google-cloud-storage`` reaches it through ``STORAGE_EMULATOR_HOST`` (and then
uses anonymous credentials), so the code under test runs its production path.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def config_bucket() -> Iterator[str]:
    """An in-memory storage emulator with one bucket; yields the bucket name.

    ``STORAGE_EMULATOR_HOST`` points at it for the module's tests.
    """
    from gcp_storage_emulator.server import create_server

    bucket = "config-bucket"
    port = _free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
    server.start()
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    try:
        yield bucket
    finally:
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous
        server.stop()


def upload(bucket: str, name: str, text: str) -> str:
    """Writes ``text`` to ``gs://bucket/name`` (through the emulator); returns the URI."""
    from google.cloud import storage

    storage.Client().bucket(bucket).blob(name).upload_from_string(text)
    return f"gs://{bucket}/{name}"
