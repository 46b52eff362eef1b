"""Where the model registry keeps its files: a local directory or a ``gs://`` prefix.

Both stores offer the few operations the registry needs, addressed by keys
relative to the registry root (``"versions/v.../model.keras"``), and both
support a compare-and-swap write (``write_if``):

* ``LocalStore``: plain files. Every single-file write goes to a hidden
  temporary file that is renamed over the target (readers see the old or the
  new content, never a part). ``write_if`` holds an exclusive ``flock`` on
  ``<root>/.lock`` while it compares the file's bytes with the token read
  earlier and renames the new content in; ``flock`` works across threads and
  processes on one machine (not across NFS clients).
* ``GcsStore``: google-cloud-storage. Single-object writes are atomic in Cloud
  Storage; ``write_if`` is an upload with ``if_generation_match`` (412 becomes
  ``PreconditionFailed``). ``tf.io.gfile`` is not used: it has no generation
  preconditions, and the ``STORAGE_EMULATOR_HOST`` stand-in the tests run
  against is reachable only through google-cloud-storage, so the tested
  ``gs://`` path is the production path.

A token is what ``read_versioned`` returns with the data: the bytes
themselves locally (None for a missing file), the object generation on GCS
(0 for a missing object, as Cloud Storage's own precondition spells it).
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
import uuid
from collections.abc import Iterator
from typing import Any, Protocol

TMP_PREFIX = ".tmp-"
LOCK_FILE = ".lock"


class PreconditionFailed(RuntimeError):
    """The object changed since it was read: a compare-and-swap write lost."""


class Store(Protocol):
    """The operations the registry performs on its root."""

    root: str
    remote: bool

    def uri(self, key: str) -> str: ...
    def read(self, key: str) -> bytes | None: ...
    def read_versioned(self, key: str) -> tuple[bytes | None, Any]: ...
    def write(self, key: str, data: bytes) -> None: ...
    def write_if(self, key: str, data: bytes, token: Any) -> None: ...
    def create(self, key: str, data: bytes) -> None: ...  # FileExistsError if present
    def exists(self, key: str) -> bool: ...
    def list_names(self, key: str) -> list[str]: ...
    def dirs_with(self, key: str, marker: str) -> list[str]: ...
    def put_tree(self, local_dir: str, key: str) -> None: ...
    def remove_tree(self, key: str) -> None: ...
    def local_tree(self, key: str) -> contextlib.AbstractContextManager[str]: ...


def is_remote(path: str) -> bool:
    """Whether ``path`` is a URL (``gs://...``) rather than a local path."""
    return "://" in path


def open_store(root: str) -> Store:
    """The store for a registry root: ``gs://bucket/prefix`` or a local directory.

    Raises:
        ValueError: for an empty root or a URL scheme other than ``gs://``.
    """
    if not root:
        raise ValueError("the registry root must not be empty")
    if not is_remote(root):
        return LocalStore(root)
    if not root.startswith("gs://") or not root[len("gs://") :].split("/")[0]:
        raise ValueError(
            f"unsupported registry root {root!r}: use a local directory or gs://bucket/prefix"
        )
    return GcsStore(root)


class LocalStore:
    """Registry files under a local directory."""

    remote = False

    def __init__(self, root: str):
        self.root = os.path.abspath(root)

    def uri(self, key: str) -> str:
        return os.path.join(self.root, *key.split("/")) if key else self.root

    def read(self, key: str) -> bytes | None:
        try:
            with open(self.uri(key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def read_versioned(self, key: str) -> tuple[bytes | None, Any]:
        data = self.read(key)
        return data, data

    @staticmethod
    @contextlib.contextmanager
    def _staged(path: str, data: bytes) -> Iterator[str]:
        """A temporary file beside ``path`` holding ``data``; removed at the end if still there."""
        directory, name = os.path.split(path)
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".{name}{TMP_PREFIX}{uuid.uuid4().hex}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            yield tmp
        finally:
            with contextlib.suppress(OSError):
                os.remove(tmp)

    def _replace(self, path: str, data: bytes) -> None:
        with self._staged(path, data) as tmp:
            os.replace(tmp, path)

    def write(self, key: str, data: bytes) -> None:
        self._replace(self.uri(key), data)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        os.makedirs(self.root, exist_ok=True)
        with open(os.path.join(self.root, LOCK_FILE), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def write_if(self, key: str, data: bytes, token: Any) -> None:
        path = self.uri(key)
        with self._locked():
            if self.read(key) != token:
                raise PreconditionFailed(f"{path} changed since it was read")
            self._replace(path, data)

    def create(self, key: str, data: bytes) -> None:
        path = self.uri(key)
        with self._staged(path, data) as tmp:
            os.link(tmp, path)  # fails with FileExistsError if path exists

    def exists(self, key: str) -> bool:
        return os.path.exists(self.uri(key))

    def list_names(self, key: str) -> list[str]:
        try:
            return sorted(os.listdir(self.uri(key)))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def dirs_with(self, key: str, marker: str) -> list[str]:
        pattern = os.path.join(glob.escape(self.uri(key)), "*", marker)
        return sorted(os.path.basename(os.path.dirname(p)) for p in glob.glob(pattern))

    def put_tree(self, local_dir: str, key: str) -> None:
        """Copies ``local_dir`` to ``key``: the directory appears whole (one rename)."""
        final = self.uri(key)
        parent = os.path.dirname(final)
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f"{TMP_PREFIX}{uuid.uuid4().hex}")
        try:
            shutil.copytree(local_dir, tmp)
            os.rename(tmp, final)  # fails if ``final`` exists and is not empty
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def remove_tree(self, key: str) -> None:
        shutil.rmtree(self.uri(key), ignore_errors=True)

    @contextlib.contextmanager
    def local_tree(self, key: str) -> Iterator[str]:
        """A local directory holding ``key``'s files: the directory itself here."""
        yield self.uri(key)


class GcsStore:
    """Registry objects under ``gs://bucket/prefix``, through google-cloud-storage.

    The client is created on first use (and not pickled), so a store can travel
    inside a pickled DoFn. ``STORAGE_EMULATOR_HOST`` redirects it to an emulator.
    """

    remote = True

    def __init__(self, root: str):
        self.root = root.rstrip("/")
        bucket, _, prefix = self.root[len("gs://") :].partition("/")
        self.bucket_name = bucket
        self.prefix = prefix.strip("/")
        self._bucket = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_bucket": None}

    @property
    def bucket(self):
        if self._bucket is None:
            from google.cloud import storage

            self._bucket = storage.Client().bucket(self.bucket_name)
        return self._bucket

    def _name(self, key: str) -> str:
        return "/".join(p for p in (self.prefix, key) if p)

    def uri(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    def read(self, key: str) -> bytes | None:
        from google.api_core import exceptions

        try:
            return self.bucket.blob(self._name(key)).download_as_bytes()
        except exceptions.NotFound:
            return None

    def read_versioned(self, key: str) -> tuple[bytes | None, Any]:
        """The object's bytes and generation (0 when absent), read consistently."""
        from google.api_core import exceptions

        for _ in range(10):
            blob = self.bucket.get_blob(self._name(key))
            if blob is None:
                return None, 0
            generation = int(blob.generation)
            try:
                data = blob.download_as_bytes(if_generation_match=generation)
            except (exceptions.PreconditionFailed, exceptions.NotFound):
                continue  # replaced between the two requests: read again
            return data, generation
        raise PreconditionFailed(f"{self.uri(key)} keeps changing while being read")

    def write(self, key: str, data: bytes) -> None:
        self.bucket.blob(self._name(key)).upload_from_string(data)

    def write_if(self, key: str, data: bytes, token: Any) -> None:
        from google.api_core import exceptions

        try:
            self.bucket.blob(self._name(key)).upload_from_string(
                data, if_generation_match=int(token or 0)
            )
        except exceptions.PreconditionFailed as e:
            raise PreconditionFailed(f"{self.uri(key)} changed since it was read") from e

    def create(self, key: str, data: bytes) -> None:
        from google.api_core import exceptions

        try:
            self.bucket.blob(self._name(key)).upload_from_string(data, if_generation_match=0)
        except exceptions.PreconditionFailed as e:
            if self.read(key) == data:  # a retried request found our own first attempt
                return
            raise FileExistsError(self.uri(key)) from e

    def exists(self, key: str) -> bool:
        return self.bucket.get_blob(self._name(key)) is not None

    def _dir(self, key: str) -> str:
        name = self._name(key)
        return f"{name}/" if name else ""

    def list_names(self, key: str) -> list[str]:
        prefix = self._dir(key)
        blobs = self.bucket.client.list_blobs(self.bucket, prefix=prefix, delimiter="/")
        names = {b.name[len(prefix) :] for b in blobs}
        names.update(p[len(prefix) :].rstrip("/") for p in blobs.prefixes)
        return sorted(n for n in names if n)

    def dirs_with(self, key: str, marker: str) -> list[str]:
        prefix = self._dir(key)
        blobs = self.bucket.client.list_blobs(
            self.bucket, prefix=prefix, match_glob=f"{prefix}*/{marker}"
        )
        return sorted({b.name[len(prefix) :].split("/")[0] for b in blobs})

    def put_tree(self, local_dir: str, key: str) -> None:
        """Uploads ``local_dir`` under ``key`` object by object (not atomic: the
        registry's ``_COMPLETE`` marker, written afterwards, is what publishes)."""
        uploaded = []
        try:
            for dirpath, _, filenames in os.walk(local_dir):
                rel = os.path.relpath(dirpath, local_dir)
                for name in sorted(filenames):
                    parts = [key] + ([] if rel == "." else rel.split(os.sep)) + [name]
                    blob = self.bucket.blob(self._name("/".join(parts)))
                    blob.upload_from_filename(os.path.join(dirpath, name))
                    uploaded.append(blob)
        except BaseException:
            for blob in uploaded:
                with contextlib.suppress(Exception):
                    blob.delete()
            raise

    def remove_tree(self, key: str) -> None:
        for blob in self.bucket.client.list_blobs(self.bucket, prefix=self._dir(key)):
            blob.delete()

    @contextlib.contextmanager
    def local_tree(self, key: str) -> Iterator[str]:
        """Downloads ``key``'s objects into a temporary directory, removed on exit."""
        import tempfile

        prefix = self._dir(key)
        tmp = tempfile.mkdtemp(prefix="registry-")
        try:
            for blob in self.bucket.client.list_blobs(self.bucket, prefix=prefix):
                rel = blob.name[len(prefix) :]
                if not rel or rel.endswith("/"):
                    continue
                target = os.path.join(tmp, *rel.split("/"))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                blob.download_to_filename(target)
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
