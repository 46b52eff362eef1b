"""Run ownership: one trainer per run id, by an exclusive claim file in the registry.

Before it records ``running``, a trainer (``trainer.task``) creates
``<registry>/claims/<run_id>.json`` *only if it does not exist*:

* locally: ``open(..., O_CREAT | O_EXCL)``, atomic on a POSIX file system;
* on Cloud Storage: an upload with the precondition ``ifGenerationMatch=0``
  ("no live object yet"), which GCS evaluates atomically.

Of two trainers racing for one run, exactly one creates the file; the other
gets ``RunOwnedElsewhere`` and exits with ``REFUSED_EXIT_CODE`` without
touching the run's status. The claim names the submission that owns it
(``attempt_id``, from the launcher), the host and the PID, so a launcher can
tell its own job from another one and re-attach to a local owner.

A claim is kept when the run ends (a redelivered trigger must not retrain).
The launcher releases it (``release``, only if the claim is still the given
attempt's) when it stops a run on shutdown and re-queues it.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from typing import Any

from dataset.times import rfc3339

CLAIMS_DIR = "claims"
REFUSED_EXIT_CODE = 75  # EX_TEMPFAIL: this run is someone else's; nothing was done


class RunOwnedElsewhere(RuntimeError):
    """Another trainer already claimed the run."""

    def __init__(self, run_id: str, owner: dict[str, Any] | None):
        self.run_id = run_id
        self.owner = owner or {}
        who = ", ".join(
            f"{k} {self.owner[k]}" for k in ("attempt_id", "host", "pid") if k in self.owner
        )
        super().__init__(f"run {run_id} is already claimed ({who or 'claim being written'})")


def new_attempt_id() -> str:
    """A fresh submission id."""
    return uuid.uuid4().hex


def claim_path(registry_root: str, run_id: str) -> str:
    """``<registry_root>/claims/<run_id>.json``."""
    if not run_id or "/" in run_id or run_id.startswith("."):
        raise ValueError(f"invalid run id {run_id!r}")
    root = os.fspath(registry_root)
    if "://" in root:
        return f"{root.rstrip('/')}/{CLAIMS_DIR}/{run_id}.json"
    return os.path.join(os.path.abspath(root), CLAIMS_DIR, f"{run_id}.json")


def _gcs_blob(uri: str, storage_client=None):
    if not uri.startswith("gs://"):
        raise ValueError(f"claims support local paths and gs:// only, not {uri}")
    if storage_client is None:
        from google.cloud import storage

        storage_client = storage.Client()
    bucket, _, name = uri[len("gs://") :].partition("/")
    return storage_client.bucket(bucket).blob(name)


def claim(
    registry_root: str,
    run_id: str,
    attempt_id: str | None = None,
    *,
    storage_client=None,
    **facts: Any,
) -> dict[str, Any]:
    """Claims ``run_id`` for this process; returns the claim written.

    Args:
        registry_root: the model registry root (local directory or ``gs://``).
        run_id: the run.
        attempt_id: the launcher's submission id (default: a fresh one).
        storage_client: a ``google.cloud.storage.Client`` for ``gs://`` roots.
        **facts: more JSON-able facts to record (e.g. ``backend``).

    Raises:
        RunOwnedElsewhere: if the run is already claimed (by anyone, this
            attempt included: a claim is never taken twice).
    """
    document = {
        "run_id": run_id,
        "attempt_id": attempt_id or new_attempt_id(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "claimed_at": rfc3339(time.time()),
        **facts,
    }
    text = json.dumps(document, sort_keys=True)
    path = claim_path(registry_root, run_id)
    if "://" in path:
        from google.api_core import exceptions as gexc

        try:
            _gcs_blob(path, storage_client).upload_from_string(
                text, content_type="application/json", if_generation_match=0
            )
        except gexc.PreconditionFailed:
            raise RunOwnedElsewhere(run_id, read(registry_root, run_id, storage_client)) from None
        return document
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise RunOwnedElsewhere(run_id, read(registry_root, run_id)) from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return document


def read(registry_root: str, run_id: str, storage_client=None) -> dict[str, Any] | None:
    """The claim of ``run_id``; None if unclaimed; ``{}`` while it is being written."""
    path = claim_path(registry_root, run_id)
    if "://" in path:
        from google.api_core import exceptions as gexc

        try:
            text = _gcs_blob(path, storage_client).download_as_text()
        except gexc.NotFound:
            return None
    else:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            return None
    try:
        document = json.loads(text)
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}


def release(registry_root: str, run_id: str, attempt_id: str, storage_client=None) -> bool:
    """Deletes the claim of ``run_id`` if ``attempt_id`` holds it; returns whether it did.

    Only for a run whose owner is known to have stopped (the launcher stopped
    it), so that the run can be started again.
    """
    path = claim_path(registry_root, run_id)
    if "://" in path:
        from google.api_core import exceptions as gexc

        blob = _gcs_blob(path, storage_client)
        try:
            blob.reload()
            document = json.loads(blob.download_as_text(if_generation_match=blob.generation))
            if document.get("attempt_id") != attempt_id:
                return False
            blob.delete(if_generation_match=blob.generation)
        except (gexc.NotFound, gexc.PreconditionFailed, ValueError):
            return False
        return True
    current = read(registry_root, run_id)
    if not current or current.get("attempt_id") != attempt_id:
        return False
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True
