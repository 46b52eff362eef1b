"""A versioned model registry on a local directory or ``gs://`` bucket path.

Every file operation goes through ``tf.io.gfile``, so the same code works on a
local disk (the default, e.g. ``.local/registry``) and on Cloud Storage.
Layout under the registry root::

    versions/<version>/model.keras      Keras 3 file (what Beam's TF model handler loads)
    versions/<version>/saved_model/     TF SavedModel, 'serving_default' signature
                                        (Keras ``Model.export``), for TF Serving / Vertex
    versions/<version>/metadata.json    version, created_at, dataset, training_data,
                                        metrics, status, reasons, parent_version, ...
    versions/<version>/_COMPLETE        written LAST; a version without it is invisible
    CURRENT                             {"version", "updated_at", "reason", "previous"}
    history/<time>-<hex>.json           one file per promotion / rollback event

Publishing is crash-safe: the artifacts are written into
``versions/.tmp-<uuid>/``, that directory is renamed to ``versions/<version>``
and only then is ``_COMPLETE`` written. Readers ignore directories whose name
starts with ``.`` and directories without the marker. (On GCS a directory
rename copies object by object, which is why the marker comes last.)

``CURRENT`` is replaced atomically: locally by writing a temporary file and
renaming it over the old one; on GCS by a single-object write, which is
atomic there. ``current_version()`` reads only that one small file, so a
running pipeline can poll it every few seconds.

The history is one small JSON file per event instead of an appended
``history.jsonl``: Cloud Storage objects cannot be appended to, and a
read-modify-write of a shared log would lose events when two writers race.
File names start with a UTC timestamp (microseconds), so listing them in name
order gives the events oldest first. ``ModelRegistry.history()`` reads them.

Version ids look like ``v20261123T183000Z-3f9a1c`` (UTC publish time and 6 random
hex digits): unique, and they sort chronologically. A publisher never issues an
id whose timestamp is not later than the newest existing one (it moves the
timestamp forward by a second if needed), so several publishes within one
second still sort in publish order.

CLI::

    python -m model.registry --registry PATH list
    python -m model.registry --registry PATH show VERSION
    python -m model.registry --registry PATH current [--json]
    python -m model.registry --registry PATH promote VERSION [--reason TEXT]
    python -m model.registry --registry PATH rollback [--to VERSION] [--reason TEXT]
    python -m model.registry --registry PATH set-status VERSION STATUS [--reason TEXT ...]
    python -m model.registry --registry PATH history

``--registry`` defaults to ``$MODEL_REGISTRY``. Errors (unknown version, empty
registry, refused promotion) print ``error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import glob
import json
import logging
import os
import posixpath
import re
import secrets
import shutil
import sys
import tempfile
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # keep ``import model.registry`` cheap: TF/Keras load on first use
    import keras

logger = logging.getLogger(__name__)

STATUSES = ("candidate", "passed", "rejected", "promoted", "rolled-back")
"""Version statuses. ``promoted`` is set by ``promote``/``rollback`` only."""

VERSIONS_DIR = "versions"
HISTORY_DIR = "history"
CURRENT_FILE = "CURRENT"
COMPLETE_MARKER = "_COMPLETE"
METADATA_FILE = "metadata.json"
KERAS_FILE = "model.keras"
SAVED_MODEL_DIR = "saved_model"
TMP_PREFIX = ".tmp-"

_VERSION_RE = re.compile(r"^v(\d{8}T\d{6}Z)-[0-9a-f]{6}$")
_STAMP_FORMAT = "%Y%m%dT%H%M%SZ"


class _LocalFS:
    """The subset of ``tf.io.gfile`` the registry uses, for local paths.

    Reading the registry (the pipeline's pointer polls, the run summary, the
    CLI) then needs no TensorFlow import, which takes seconds.
    """

    GFile = staticmethod(open)
    exists = staticmethod(os.path.exists)
    glob = staticmethod(glob.glob)
    isdir = staticmethod(os.path.isdir)
    listdir = staticmethod(os.listdir)
    remove = staticmethod(os.remove)
    rmtree = staticmethod(shutil.rmtree)

    @staticmethod
    def makedirs(path: str) -> None:
        os.makedirs(path, exist_ok=True)

    @staticmethod
    def rename(src: str, dst: str, overwrite: bool = False) -> None:
        if not overwrite and os.path.exists(dst):
            raise FileExistsError(dst)
        os.replace(src, dst)

    @staticmethod
    def copy(src: str, dst: str, overwrite: bool = False) -> None:
        if not overwrite and os.path.exists(dst):
            raise FileExistsError(dst)
        shutil.copyfile(src, dst)


def _is_remote(path: str) -> bool:
    return "://" in path


def _gfile(root: str):
    """File operations for ``root``: local ones, or ``tf.io.gfile`` for URLs (gs://)."""
    if not _is_remote(root):
        return _LocalFS
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf.io.gfile


def _not_found_error(root: str) -> type[Exception]:
    if not _is_remote(root):
        return FileNotFoundError
    import tensorflow as tf

    return tf.errors.NotFoundError


def rfc3339(moment: dt.datetime) -> str:
    """A UTC datetime as RFC 3339 with seconds and a 'Z' (``2026-11-23T18:30:00Z``)."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _json_default(value: Any) -> Any:
    """Makes numpy scalars/arrays and datetimes JSON-serializable."""
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    if isinstance(value, dt.datetime):
        return rfc3339(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _dumps(document: Any, indent: int | None = 2) -> str:
    return json.dumps(document, indent=indent, sort_keys=False, default=_json_default)


def _is_remote(path: str) -> bool:
    return "://" in path


def _join(*parts: str) -> str:
    return posixpath.join(*parts) if _is_remote(parts[0]) else os.path.join(*parts)


@dataclasses.dataclass(frozen=True)
class VersionInfo:
    """One complete model version.

    Attributes:
        version: the version id, e.g. ``v20261123T183000Z-3f9a1c``.
        path: the version's directory (local path or ``gs://`` URI).
        metadata: the parsed ``metadata.json``.
        status: the version's status (one of ``STATUSES``).
    """

    version: str
    path: str
    metadata: dict[str, Any]
    status: str

    @property
    def created_at(self) -> str | None:
        """RFC 3339 publish time."""
        return self.metadata.get("created_at")

    @property
    def metrics(self) -> dict[str, Any]:
        """Validation metrics recorded at publish time (may be empty)."""
        return dict(self.metadata.get("metrics") or {})

    @property
    def keras_path(self) -> str:
        """Path of the ``model.keras`` file."""
        return _join(self.path, KERAS_FILE)

    @property
    def saved_model_path(self) -> str:
        """Path of the ``saved_model`` directory."""
        return _join(self.path, SAVED_MODEL_DIR)


class ModelRegistry:
    """A versioned model registry rooted at a local directory or a ``gs://`` path.

    Args:
        root: the registry directory. It is created on the first publish; reading
            an absent registry behaves like reading an empty one.
    """

    def __init__(self, root: str):
        root = os.fspath(root)
        if not root:
            raise ValueError("the registry root must not be empty")
        self.root = root.rstrip("/") if _is_remote(root) else os.path.abspath(root)
        self._remote = _is_remote(self.root)

    def __repr__(self) -> str:
        return f"ModelRegistry({self.root!r})"

    # ----------------------------------------------------------------- paths

    @property
    def versions_dir(self) -> str:
        return _join(self.root, VERSIONS_DIR)

    @property
    def history_dir(self) -> str:
        return _join(self.root, HISTORY_DIR)

    @property
    def current_file(self) -> str:
        return _join(self.root, CURRENT_FILE)

    def version_path(self, version: str) -> str:
        """The directory of ``version`` (whether or not it exists)."""
        _check_version_name(version)
        return _join(self.versions_dir, version)

    def keras_path(self, version: str) -> str:
        """Path of ``version``'s ``model.keras`` (what Beam's TF model handler loads).

        Raises:
            ValueError: if ``version`` is unknown or incomplete.
        """
        return self.get(version).keras_path

    def saved_model_path(self, version: str) -> str:
        """Path of ``version``'s SavedModel directory (for TF Serving / Vertex AI).

        Raises:
            ValueError: if ``version`` is unknown or incomplete.
        """
        return self.get(version).saved_model_path

    # ------------------------------------------------------------ low level

    def _read_text(self, path: str) -> str | None:
        """A file's text, or None if it does not exist."""
        try:
            with _gfile(self.root).GFile(path, "r") as f:
                return f.read()
        except _not_found_error(self.root):
            return None

    def _write_atomic(self, path: str, text: str) -> None:
        """Replaces ``path`` so readers see the old or the new content, never a part.

        Locally: write a temporary file in the same directory, then rename it over
        ``path``. On GCS: one object write (atomic there; a rename would be a copy).
        """
        gfile = _gfile(self.root)
        if self._remote:
            with gfile.GFile(path, "w") as f:
                f.write(text)
            return
        directory, name = os.path.split(path)
        tmp = os.path.join(directory, f".{name}{TMP_PREFIX}{uuid.uuid4().hex}")
        try:
            with gfile.GFile(tmp, "w") as f:
                f.write(text)
            gfile.rename(tmp, path, overwrite=True)
        except BaseException:
            with contextlib.suppress(Exception):
                gfile.remove(tmp)
            raise

    def _copy_tree(self, local_dir: str, dest: str) -> None:
        """Copies a local directory tree to ``dest`` (any gfile path)."""
        gfile = _gfile(self.root)
        for dirpath, _, filenames in os.walk(local_dir):
            rel = os.path.relpath(dirpath, local_dir)
            target = dest if rel == "." else _join(dest, *rel.split(os.sep))
            gfile.makedirs(target)
            for name in filenames:
                gfile.copy(os.path.join(dirpath, name), _join(target, name), overwrite=True)

    def _version_dir_names(self) -> list[str]:
        """Names of all version directories (complete or not), excluding dot-dirs."""
        gfile = _gfile(self.root)
        if not gfile.isdir(self.versions_dir):
            return []
        names = (n.rstrip("/") for n in gfile.listdir(self.versions_dir))
        return sorted(n for n in names if n and not n.startswith("."))

    def _complete_names(self) -> list[str]:
        """Names of complete versions, sorted (= chronological)."""
        gfile = _gfile(self.root)
        if not gfile.isdir(self.versions_dir):
            return []
        pattern = _join(self.versions_dir, "*", COMPLETE_MARKER)
        names = {
            posixpath.basename(posixpath.dirname(p.replace(os.sep, "/")))
            for p in gfile.glob(pattern)
        }
        return sorted(n for n in names if n and not n.startswith("."))

    def _read_info(self, version: str) -> VersionInfo:
        path = self.version_path(version)
        text = self._read_text(_join(path, METADATA_FILE))
        if text is None:
            raise ValueError(f"version {version} has no {METADATA_FILE} in {path}")
        metadata = json.loads(text)
        return VersionInfo(
            version=version,
            path=path,
            metadata=metadata,
            status=str(metadata.get("status", "candidate")),
        )

    def _new_version_id(self, now: dt.datetime) -> str:
        stamp = now.astimezone(dt.UTC).replace(microsecond=0)
        stamps = [m.group(1) for m in map(_VERSION_RE.match, self._version_dir_names()) if m]
        if stamps:
            newest = dt.datetime.strptime(max(stamps), _STAMP_FORMAT).replace(tzinfo=dt.UTC)
            if stamp <= newest:
                stamp = newest + dt.timedelta(seconds=1)
        return f"v{stamp.strftime(_STAMP_FORMAT)}-{secrets.token_hex(3)}"

    def _update_metadata(self, version: str, **changes: Any) -> VersionInfo:
        info = self.get(version)
        metadata = dict(info.metadata)
        metadata.update(changes)
        self._write_atomic(_join(info.path, METADATA_FILE), _dumps(metadata))
        return dataclasses.replace(info, metadata=metadata, status=str(metadata["status"]))

    def _record(self, event: dict[str, Any]) -> None:
        """Writes one history event file."""
        gfile = _gfile(self.root)
        gfile.makedirs(self.history_dir)
        now = _utcnow()
        name = f"{now.strftime('%Y%m%dT%H%M%S')}{now.microsecond:06d}Z-{secrets.token_hex(3)}.json"
        event = {"at": rfc3339(now), **event}
        with gfile.GFile(_join(self.history_dir, name), "w") as f:
            f.write(_dumps(event, indent=None))

    def _set_current(self, version: str, reason: str, previous: str | None) -> dict[str, Any]:
        pointer = {
            "version": version,
            "updated_at": rfc3339(_utcnow()),
            "reason": reason,
            "previous": previous,
        }
        _gfile(self.root).makedirs(self.root)
        self._write_atomic(self.current_file, _dumps(pointer))
        return pointer

    def _check_promotable(self, version: str) -> VersionInfo:
        info = self.get(version)
        if info.status == "rejected":
            reasons = "; ".join(info.metadata.get("reasons") or []) or "no reason recorded"
            raise ValueError(f"version {version} is rejected ({reasons}); it cannot be promoted")
        return info

    # ------------------------------------------------------------- reading

    def versions(self) -> list[VersionInfo]:
        """All complete versions, oldest first."""
        return [self._read_info(name) for name in self._complete_names()]

    def get(self, version: str) -> VersionInfo:
        """The complete version ``version``.

        Raises:
            ValueError: if the version does not exist or its publish did not complete;
                the message names the known versions.
        """
        path = self.version_path(version)
        gfile = _gfile(self.root)
        if gfile.exists(_join(path, COMPLETE_MARKER)):
            return self._read_info(version)
        if gfile.isdir(path):
            raise ValueError(
                f"version {version} is incomplete (no {COMPLETE_MARKER} marker: its publish "
                f"did not finish) in registry {self.root}"
            )
        known = self._complete_names()
        if not known:
            raise ValueError(f"unknown version {version}: registry {self.root} has no versions")
        listed = ", ".join(known[-10:]) + (
            f" (and {len(known) - 10} older)" if len(known) > 10 else ""
        )
        raise ValueError(f"unknown version {version} in registry {self.root}; known: {listed}")

    def current_pointer(self) -> dict[str, Any] | None:
        """The parsed ``CURRENT`` file, or None if nothing was promoted yet."""
        text = self._read_text(self.current_file)
        if text is None:
            return None
        try:
            pointer = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{self.current_file} is not valid JSON: {e}") from e
        if not isinstance(pointer, dict) or not pointer.get("version"):
            raise ValueError(f"{self.current_file} has no version: {text[:200]!r}")
        return pointer

    def current_version(self) -> str | None:
        """The current (serving) version id, or None. Reads one small file."""
        pointer = self.current_pointer()
        return None if pointer is None else str(pointer["version"])

    def current(self) -> VersionInfo | None:
        """The current version's info, or None if nothing was promoted yet.

        Raises:
            ValueError: if ``CURRENT`` names a version that is not (or no longer) complete.
        """
        version = self.current_version()
        return None if version is None else self.get(version)

    def history(self) -> list[dict[str, Any]]:
        """Promotion and rollback events, oldest first.

        Each event has ``at`` (RFC 3339), ``action`` (``promote`` or ``rollback``),
        ``version`` (the new current version), ``previous`` and ``reason``.
        """
        gfile = _gfile(self.root)
        if not gfile.isdir(self.history_dir):
            return []
        events = []
        for name in sorted(n.rstrip("/") for n in gfile.listdir(self.history_dir)):
            if name.startswith(".") or not name.endswith(".json"):
                continue
            text = self._read_text(_join(self.history_dir, name))
            if text:
                events.append(json.loads(text))
        return events

    def load_keras(self, version: str) -> keras.Model:
        """Loads ``version``'s Keras model.

        For remote registries the ``.keras`` file is first copied to a local
        temporary file (Keras loads local files).

        Raises:
            ValueError: if ``version`` is unknown or incomplete.
        """
        import keras

        path = self.keras_path(version)
        if not self._remote:
            return keras.models.load_model(path)
        tmp_dir = tempfile.mkdtemp(prefix="registry-")
        try:
            local = os.path.join(tmp_dir, KERAS_FILE)
            _gfile(self.root).copy(path, local, overwrite=True)
            return keras.models.load_model(local)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)

    # ------------------------------------------------------------- writing

    def publish(
        self, model: keras.Model, metadata: dict[str, Any], status: str = "candidate"
    ) -> str:
        """Saves ``model`` as a new complete version and returns its id.

        Writes ``model.keras``, ``saved_model/`` (``Model.export``, with a
        ``serving_default`` signature) and ``metadata.json`` into a hidden
        temporary directory, renames it to the version's name, then writes
        ``_COMPLETE``. The registry sets ``version``, ``created_at`` and
        ``status`` in the metadata and fills ``parent_version`` (the current
        version at publish time) and ``reasons`` (``[]``) unless given.

        Args:
            model: a built Keras model.
            metadata: JSON-serializable facts about the version, e.g. ``dataset``,
                ``training_data`` ``{start, end, rows}``, ``metrics``, ``source``.
            status: the initial status; not ``promoted`` (use ``promote``).

        Raises:
            ValueError: for an unknown status.
        """
        if status not in STATUSES or status == "promoted":
            allowed = ", ".join(s for s in STATUSES if s != "promoted")
            raise ValueError(f"unknown publish status {status!r} (allowed: {allowed})")
        import keras
        import tensorflow as tf

        gfile = _gfile(self.root)
        now = _utcnow()
        gfile.makedirs(self.versions_dir)
        version = self._new_version_id(now)
        document = dict(metadata)
        document.update(
            version=version,
            created_at=rfc3339(now),
            status=status,
            reasons=list(document.get("reasons") or []),
            parent_version=document.get("parent_version", self.current_version()),
            artifacts={"keras": KERAS_FILE, "saved_model": SAVED_MODEL_DIR},
            framework={"keras": keras.__version__, "tensorflow": tf.__version__},
        )
        text = _dumps(document)  # fail on unserializable metadata before writing anything

        staging = tempfile.mkdtemp(prefix="registry-publish-")
        tmp_dir = _join(self.versions_dir, f"{TMP_PREFIX}{uuid.uuid4().hex}")
        try:
            model.save(os.path.join(staging, KERAS_FILE))
            model.export(
                os.path.join(staging, SAVED_MODEL_DIR), format="tf_saved_model", verbose=False
            )
            with open(os.path.join(staging, METADATA_FILE), "w", encoding="utf-8") as f:
                f.write(text)
            self._copy_tree(staging, tmp_dir)
            final = self.version_path(version)
            gfile.rename(tmp_dir, final, overwrite=False)
            with gfile.GFile(_join(final, COMPLETE_MARKER), "w") as f:
                f.write(_dumps({"version": version, "completed_at": rfc3339(_utcnow())}))
        except BaseException:
            if gfile.exists(tmp_dir):
                gfile.rmtree(tmp_dir)
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.info("published %s to %s (status %s)", version, self.root, status)
        return version

    def set_status(self, version: str, status: str, reasons: Sequence[str] = ()) -> VersionInfo:
        """Sets a version's status and reasons (e.g. ``passed``/``rejected`` after a gate).

        Args:
            version: a complete version.
            status: one of ``STATUSES`` except ``promoted`` (use ``promote``).
            reasons: why; replaces the recorded reasons.

        Returns:
            The updated version info.

        Raises:
            ValueError: for an unknown version or status.
        """
        if status not in STATUSES or status == "promoted":
            allowed = ", ".join(s for s in STATUSES if s != "promoted")
            hint = " (use promote)" if status == "promoted" else ""
            raise ValueError(f"cannot set status {status!r}{hint}; allowed: {allowed}")
        if isinstance(reasons, str):
            reasons = [reasons]
        return self._update_metadata(
            version,
            status=status,
            reasons=[str(r) for r in reasons],
            status_updated_at=rfc3339(_utcnow()),
        )

    def promote(self, version: str, reason: str = "manual") -> None:
        """Makes ``version`` the current one (atomic ``CURRENT`` replace) and logs it.

        Promoting the version that is already current does nothing.

        Raises:
            ValueError: if ``version`` is unknown, incomplete or rejected.
        """
        self._check_promotable(version)
        previous = self.current_version()
        if previous == version:
            logger.info("%s is already the current version", version)
            return
        self._set_current(version, reason, previous)
        self._record(
            {"action": "promote", "version": version, "previous": previous, "reason": reason}
        )
        self._update_metadata(version, status="promoted", promoted_at=rfc3339(_utcnow()))
        logger.info("promoted %s (previous: %s): %s", version, previous, reason)

    def rollback(self, to_version: str | None = None, reason: str = "manual rollback") -> str:
        """Points ``CURRENT`` back to an earlier version and returns it.

        Without ``to_version`` the target is the version that was current before
        the current one, following the promotion history back past versions that
        were rolled back from, rejected or are incomplete. The version rolled back
        from gets status ``rolled-back``.

        Raises:
            ValueError: if nothing is current, there is no earlier version to return
                to, or ``to_version`` is unknown, incomplete or rejected.
        """
        current = self.current_version()
        if current is None:
            raise ValueError(f"registry {self.root} has no current version to roll back from")
        if to_version is None:
            to_version = self._previous_version(current)
            if to_version is None:
                raise ValueError(
                    f"no earlier version to roll back to from {current} (history has none "
                    "that is complete and not rejected); pass one explicitly"
                )
        if to_version == current:
            raise ValueError(f"{to_version} is already the current version")
        self._check_promotable(to_version)
        self._set_current(to_version, reason, current)
        self._record(
            {"action": "rollback", "version": to_version, "previous": current, "reason": reason}
        )
        self._update_metadata(to_version, status="promoted", promoted_at=rfc3339(_utcnow()))
        try:
            self._update_metadata(
                current,
                status="rolled-back",
                reasons=[reason],
                rolled_back_at=rfc3339(_utcnow()),
            )
        except ValueError:  # the old version vanished: nothing to mark
            pass
        logger.info("rolled back from %s to %s: %s", current, to_version, reason)
        return to_version

    def _previous_version(self, current: str) -> str | None:
        """The version to roll back to from ``current``, following the history."""
        stack: list[str] = []
        for event in self.history():
            version = event.get("version")
            if not version:
                continue
            if event.get("action") == "rollback" and version in stack:
                last = len(stack) - 1 - stack[::-1].index(version)
                del stack[last + 1 :]  # back to where ``version`` was current
            else:
                stack.append(version)
        if not stack or stack[-1] != current:
            # History out of step with CURRENT (e.g. lost): trust CURRENT's "previous".
            pointer = self.current_pointer() or {}
            stack = [v for v in [pointer.get("previous"), current] if v]
        known = set(self._complete_names())
        for candidate in reversed(stack[:-1]):
            if candidate == current or candidate not in known:
                continue
            if self._read_info(candidate).status in ("rejected", "rolled-back"):
                continue
            return candidate
        return None


def _check_version_name(version: str) -> None:
    if not isinstance(version, str) or not version or "/" in version or version.startswith("."):
        raise ValueError(f"invalid version id {version!r}")


# --------------------------------------------------------------------- CLI

_METRIC_ORDER = ("accuracy", "auc", "log_loss", "base_rate", "mae", "rmse")


def format_metrics(metrics: dict[str, Any], limit: int = 4) -> str:
    """A compact ``name=value`` string of the most useful metrics."""
    keys = [k for k in _METRIC_ORDER if k in metrics]
    keys += [k for k in sorted(metrics) if k not in keys]
    parts = []
    for key in keys:
        value = metrics[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
        if len(parts) == limit:
            break
    return " ".join(parts) or "-"


def format_table(infos: Sequence[VersionInfo], current: str | None) -> str:
    """The ``list`` table: one row per version, the current one marked with ``*``."""
    header = ("", "VERSION", "STATUS", "CREATED", "ROWS", "METRICS")
    rows = [header]
    for info in infos:
        rows_trained = (info.metadata.get("training_data") or {}).get("rows")
        rows.append(
            (
                "*" if info.version == current else "",
                info.version,
                info.status,
                info.created_at or "-",
                "-" if rows_trained is None else str(rows_trained),
                format_metrics(info.metrics),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m model.registry", description="Inspect and manage the model registry."
    )
    parser.add_argument(
        "--registry",
        default=os.environ.get("MODEL_REGISTRY"),
        help="registry root: a directory or gs://bucket/path (default: $MODEL_REGISTRY)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list complete versions, oldest first (* = current)")
    p = sub.add_parser("show", help="print a version's metadata and paths as JSON")
    p.add_argument("version")
    p = sub.add_parser("current", help="print the current version id")
    p.add_argument("--json", action="store_true", help="print the whole CURRENT record")
    p = sub.add_parser("promote", help="make a version current")
    p.add_argument("version")
    p.add_argument("--reason", default="manual")
    p = sub.add_parser("rollback", help="return to the previous (or a given) version")
    p.add_argument("--to", dest="to_version", default=None, metavar="VERSION")
    p.add_argument("--reason", default="manual rollback")
    p = sub.add_parser("set-status", help="set a version's status (e.g. rejected)")
    p.add_argument("version")
    p.add_argument("status", choices=[s for s in STATUSES if s != "promoted"])
    p.add_argument("--reason", action="append", default=[], help="repeatable")
    sub.add_parser("history", help="print promotion/rollback events, oldest first")
    return parser


class _CliError(Exception):
    pass


def _run(args: argparse.Namespace) -> None:
    registry = ModelRegistry(args.registry)
    out = sys.stdout
    if args.command == "list":
        infos = registry.versions()
        if not infos:
            raise _CliError(f"registry {registry.root} has no versions")
        current = registry.current_version()
        print(format_table(infos, current), file=out)
        print(f"\n{len(infos)} version(s); current: {current or 'none'}", file=out)
    elif args.command == "show":
        info = registry.get(args.version)
        document = {
            "version": info.version,
            "current": info.version == registry.current_version(),
            "path": info.path,
            "keras_path": info.keras_path,
            "saved_model_path": info.saved_model_path,
            "metadata": info.metadata,
        }
        print(_dumps(document), file=out)
    elif args.command == "current":
        pointer = registry.current_pointer()
        if pointer is None:
            raise _CliError(f"registry {registry.root} has no current version")
        print(_dumps(pointer) if args.json else pointer["version"], file=out)
    elif args.command == "promote":
        previous = registry.current_version()
        registry.promote(args.version, reason=args.reason)
        print(f"current: {args.version} (was {previous or 'none'})", file=out)
    elif args.command == "rollback":
        previous = registry.current_version()
        version = registry.rollback(args.to_version, reason=args.reason)
        print(f"current: {version} (rolled back from {previous})", file=out)
    elif args.command == "set-status":
        info = registry.set_status(args.version, args.status, args.reason)
        print(f"{info.version}: {info.status}", file=out)
    elif args.command == "history":
        events = registry.history()
        if not events:
            raise _CliError(f"registry {registry.root} has no promotion history")
        for e in events:
            print(
                f"{e.get('at')}  {e.get('action'):<8}  {e.get('version')}  "
                f"(previous: {e.get('previous') or 'none'})  {e.get('reason', '')}",
                file=out,
            )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 for user errors)."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if not args.registry:
        parser.error("--registry is required (or set MODEL_REGISTRY)")
    try:
        _run(args)
    except (_CliError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
