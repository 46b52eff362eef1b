"""A versioned model registry on a local directory or a ``gs://`` bucket path.

File operations go through ``model.storage``: plain files locally, the
google-cloud-storage client for ``gs://`` roots (the same code path the tests
run against a storage emulator). Layout under the registry root::

    versions/<version>/model.keras      Keras 3 file (what the serving handler loads)
    versions/<version>/saved_model/     TF SavedModel for TF Serving / Vertex AI:
                                        'serving_default' takes the raw feature fields
                                        (``model.export``), 'serving_encoded' the vector
    versions/<version>/metadata.json    version, created_at, dataset, training_data,
                                        metrics, status, reasons, parent_version, ...
    versions/<version>/_COMPLETE        written LAST; a version without it is invisible
    CURRENT                             {"version", "updated_at", "reason", "previous",
                                         "sequence"}
    history/<sequence>-<time>-<hex>.json  one file per promotion / rollback event

**Publishing is atomic for readers.** A version becomes visible only when its
``_COMPLETE`` marker exists, and the marker is created (create-if-absent)
after every other file. Locally the files are first copied into a hidden
``versions/.tmp-<uuid>/`` directory that is renamed into place; on GCS they are
uploaded object by object. A publisher killed at any point leaves at most a
hidden or unmarked directory: readers skip it, ``get``/``promote`` refuse it,
so it can never become ``CURRENT`` or be served.

**``CURRENT`` changes by compare-and-swap.** ``promote`` and ``rollback`` read
``CURRENT`` with a token (its GCS generation; locally its bytes), decide, and
write with that token as a precondition (GCS ``if_generation_match``; locally
a compare under an exclusive ``flock`` followed by an atomic rename). If
another writer got in between, the write is refused and the decision is
re-made on the new state (up to ``CAS_ATTEMPTS`` times), so no update is
lost. With ``if_current=`` the caller pins the state its decision was based
on: when ``CURRENT`` differs, ``CurrentChanged`` is raised and nothing
changes. That is how a rollback judged about v2 never moves a v3 promoted
meanwhile. ``sequence`` counts the swaps; history events carry it, so the
history orders events as ``CURRENT`` saw them.

The history is one small JSON file per event: Cloud Storage objects cannot be
appended to, and a read-modify-write of a shared log would lose events when two
writers race. Version ids look like ``v20261123T183000Z-3f9a1c`` (UTC publish
time and 6 random hex digits): unique, and they sort chronologically (a
publisher moves the timestamp past the newest existing one if needed).

The command line lives in ``model.registry_cli`` (``python -m model.registry``
still works and runs it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import re
import secrets
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from model.storage import PreconditionFailed, Store, is_remote, open_store

if TYPE_CHECKING:  # keep ``import model.registry`` cheap: TF/Keras load on first use
    import keras

    from dataset.config import DatasetConfig

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
CAS_ATTEMPTS = 20
"""How often ``promote``/``rollback`` re-decide after losing a race on ``CURRENT``."""

_VERSION_RE = re.compile(r"^v(\d{8}T\d{6}Z)-[0-9a-f]{6}$")
_STAMP_FORMAT = "%Y%m%dT%H%M%SZ"


class CurrentChanged(RuntimeError):
    """``CURRENT`` is not what the caller's decision was based on; nothing was changed."""


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


_UNSET: Any = _Unset()


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


def _key(*parts: str) -> str:
    return "/".join(parts)


def _child(path: str, name: str) -> str:
    """``path/name`` for a local path or a ``gs://`` URI."""
    return f"{path}/{name}" if is_remote(path) else os.path.join(path, name)


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
        return _child(self.path, KERAS_FILE)

    @property
    def saved_model_path(self) -> str:
        """Path of the ``saved_model`` directory."""
        return _child(self.path, SAVED_MODEL_DIR)


class ModelRegistry:
    """A versioned model registry rooted at a local directory or a ``gs://`` path.

    Args:
        root: the registry directory. It is created on the first publish; reading
            an absent registry behaves like reading an empty one.

    Raises:
        ValueError: for an empty root or an unsupported URL scheme.
    """

    def __init__(self, root: str):
        self._store: Store = open_store(os.fspath(root))
        self.root = self._store.root

    def __repr__(self) -> str:
        return f"ModelRegistry({self.root!r})"

    # ----------------------------------------------------------------- paths

    @property
    def remote(self) -> bool:
        """Whether the registry lives on Cloud Storage."""
        return self._store.remote

    @property
    def versions_dir(self) -> str:
        return self._store.uri(VERSIONS_DIR)

    @property
    def history_dir(self) -> str:
        return self._store.uri(HISTORY_DIR)

    @property
    def current_file(self) -> str:
        return self._store.uri(CURRENT_FILE)

    def version_path(self, version: str) -> str:
        """The directory of ``version`` (whether or not it exists)."""
        _check_version_name(version)
        return self._store.uri(_key(VERSIONS_DIR, version))

    def keras_path(self, version: str) -> str:
        """Path of ``version``'s ``model.keras``.

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

    def _read_text(self, key: str) -> str | None:
        data = self._store.read(key)
        return None if data is None else data.decode("utf-8")

    def _version_dir_names(self) -> list[str]:
        """Names of all version directories (complete or not), excluding dot-dirs."""
        names = self._store.list_names(VERSIONS_DIR)
        return sorted(n for n in names if n and not n.startswith("."))

    def _complete_names(self) -> list[str]:
        """Names of complete versions, sorted (= chronological)."""
        names = self._store.dirs_with(VERSIONS_DIR, COMPLETE_MARKER)
        return sorted(n for n in names if n and not n.startswith("."))

    def _read_info(self, version: str) -> VersionInfo:
        path = self.version_path(version)
        text = self._read_text(_key(VERSIONS_DIR, version, METADATA_FILE))
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
        key = _key(VERSIONS_DIR, version, METADATA_FILE)
        self._store.write(key, _dumps(metadata).encode("utf-8"))
        return dataclasses.replace(info, metadata=metadata, status=str(metadata["status"]))

    def _record(self, event: dict[str, Any], sequence: int) -> None:
        """Writes one history event file (named by ``CURRENT``'s sequence)."""
        now = _utcnow()
        stamp = f"{now.strftime('%Y%m%dT%H%M%S')}{now.microsecond:06d}Z"
        name = f"{sequence:012d}-{stamp}-{secrets.token_hex(3)}.json"
        event = {"at": rfc3339(now), "sequence": sequence, **event}
        self._store.create(_key(HISTORY_DIR, name), _dumps(event, indent=None).encode("utf-8"))

    def _check_promotable(self, version: str) -> VersionInfo:
        info = self.get(version)
        if info.status == "rejected":
            reasons = "; ".join(info.metadata.get("reasons") or []) or "no reason recorded"
            raise ValueError(f"version {version} is rejected ({reasons}); it cannot be promoted")
        return info

    def _parse_pointer(self, data: bytes | None) -> dict[str, Any] | None:
        if data is None:
            return None
        text = data.decode("utf-8")
        try:
            pointer = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{self.current_file} is not valid JSON: {e}") from e
        if not isinstance(pointer, dict) or not pointer.get("version"):
            raise ValueError(f"{self.current_file} has no version: {text[:200]!r}")
        return pointer

    def _swap_current(
        self,
        action: str,
        decide: Callable[[str | None, dict[str, Any] | None], str | None],
        reason: str,
        if_current: Any,
    ) -> dict[str, Any] | None:
        """Compare-and-swap of ``CURRENT``; returns the new pointer (None: no change).

        ``decide(current, pointer)`` returns the version to make current (or
        None for no change); it is called again after a lost race, on the new
        state. It may raise ``ValueError`` to refuse.
        """
        for _ in range(CAS_ATTEMPTS):
            data, token = self._store.read_versioned(CURRENT_FILE)
            pointer = self._parse_pointer(data)
            current = None if pointer is None else str(pointer["version"])
            if if_current is not _UNSET and current != if_current:
                raise CurrentChanged(
                    f"{action} refused: CURRENT is {current or 'empty'}, the caller expected "
                    f"{if_current or 'empty'}; nothing was changed"
                )
            target = decide(current, pointer)
            if target is None or target == current:
                return None
            sequence = int((pointer or {}).get("sequence") or 0) + 1
            new = {
                "version": target,
                "updated_at": rfc3339(_utcnow()),
                "reason": reason,
                "previous": current,
                "sequence": sequence,
            }
            payload = _dumps(new).encode("utf-8")
            try:
                self._store.write_if(CURRENT_FILE, payload, token)
            except PreconditionFailed:
                # A retried request may have landed our own write before the 412.
                if self._store.read(CURRENT_FILE) != payload:
                    logger.info("CURRENT changed during %s; deciding again", action)
                    continue
            self._record(
                {"action": action, "version": target, "previous": current, "reason": reason},
                sequence,
            )
            return new
        raise CurrentChanged(
            f"{action} gave up: CURRENT kept changing ({CAS_ATTEMPTS} attempts); nothing changed"
        )

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
        _check_version_name(version)
        if self._store.exists(_key(VERSIONS_DIR, version, COMPLETE_MARKER)):
            return self._read_info(version)
        if version in self._version_dir_names():
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
        return self._parse_pointer(self._store.read(CURRENT_FILE))

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
        """Promotion and rollback events, in the order they changed ``CURRENT``.

        Each event has ``at`` (RFC 3339), ``action`` (``promote`` or ``rollback``),
        ``version`` (the new current version), ``previous``, ``reason`` and
        ``sequence`` (events written before sequences existed sort first, by time).
        """
        events = []
        for name in self._store.list_names(HISTORY_DIR):
            if name.startswith(".") or not name.endswith(".json"):
                continue
            text = self._read_text(_key(HISTORY_DIR, name))
            if text:
                events.append((name, json.loads(text)))
        events.sort(key=lambda item: (int(item[1].get("sequence") or 0), item[0]))
        return [event for _, event in events]

    @contextlib.contextmanager
    def local_artifacts(self, version: str) -> Iterator[str]:
        """A local directory with ``version``'s files (``model.keras``, ``saved_model/``).

        Locally this is the version's own directory; for ``gs://`` the objects are
        downloaded into a temporary directory that is removed when the block ends.

        Raises:
            ValueError: if ``version`` is unknown or incomplete.
        """
        self.get(version)
        with self._store.local_tree(_key(VERSIONS_DIR, version)) as path:
            yield path

    def load_keras(self, version: str) -> keras.Model:
        """Loads ``version``'s Keras model (downloaded first from ``gs://``).

        Raises:
            ValueError: if ``version`` is unknown or incomplete.
        """
        import keras

        with self.local_artifacts(version) as path:
            return keras.models.load_model(os.path.join(path, KERAS_FILE))

    # ------------------------------------------------------------- writing

    def publish(
        self,
        model: keras.Model,
        metadata: dict[str, Any],
        status: str = "candidate",
        config: DatasetConfig | None = None,
    ) -> str:
        """Saves ``model`` as a new complete version and returns its id.

        Writes ``model.keras``, ``saved_model/`` (``Model.export``, with a
        ``serving_default`` signature) and ``metadata.json``, then creates
        ``_COMPLETE``; only then is the version visible. The registry sets
        ``version``, ``created_at`` and ``status`` in the metadata and fills
        ``parent_version`` (the current version at publish time) and ``reasons``
        (``[]``) unless given.

        Args:
            model: a built Keras model.
            metadata: JSON-serializable facts about the version, e.g. ``dataset``,
                ``training_data`` ``{start, end, rows}``, ``metrics``, ``source``.
            status: the initial status; not ``promoted`` (use ``promote``).
            config: the dataset config; when given, ``serving_default`` takes the
                raw feature fields and encodes them in the graph
                (``model.export.export_saved_model``; ``serving_encoded`` keeps
                the encoded vector). Without it, ``serving_default`` takes the
                encoded vector (``Model.export``).

        Raises:
            ValueError: for an unknown status.
        """
        if status not in STATUSES or status == "promoted":
            allowed = ", ".join(s for s in STATUSES if s != "promoted")
            raise ValueError(f"unknown publish status {status!r} (allowed: {allowed})")
        import keras
        import tensorflow as tf

        now = _utcnow()
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
        key = _key(VERSIONS_DIR, version)
        try:
            model.save(os.path.join(staging, KERAS_FILE))
            saved_model = os.path.join(staging, SAVED_MODEL_DIR)
            if config is not None:
                from model.export import export_saved_model

                export_saved_model(model, saved_model, config)
            else:
                model.export(saved_model, format="tf_saved_model", verbose=False)
            with open(os.path.join(staging, METADATA_FILE), "w", encoding="utf-8") as f:
                f.write(text)
            self._store.put_tree(staging, key)
            marker = {"version": version, "completed_at": rfc3339(_utcnow())}
            self._store.create(_key(key, COMPLETE_MARKER), _dumps(marker).encode("utf-8"))
        except BaseException:
            with contextlib.suppress(Exception):
                self._store.remove_tree(key)
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

    def promote(self, version: str, reason: str = "manual", *, if_current: Any = _UNSET) -> None:
        """Makes ``version`` the current one (compare-and-swap on ``CURRENT``) and logs it.

        Promoting the version that is already current does nothing.

        Args:
            version: a complete, not rejected version.
            reason: recorded in ``CURRENT`` and the history.
            if_current: when given (a version id, or None for "nothing current
                yet"), promote only if ``CURRENT`` still names it at the moment
                of the swap.

        Raises:
            ValueError: if ``version`` is unknown, incomplete or rejected.
            CurrentChanged: ``CURRENT`` is not ``if_current``, or it kept changing.
        """
        self._check_promotable(version)
        pointer = self._swap_current("promote", lambda current, _: version, reason, if_current)
        if pointer is None:
            logger.info("%s is already the current version", version)
            return
        self._update_metadata(version, status="promoted", promoted_at=rfc3339(_utcnow()))
        logger.info("promoted %s (previous: %s): %s", version, pointer["previous"], reason)

    def rollback(
        self,
        to_version: str | None = None,
        reason: str = "manual rollback",
        *,
        if_current: Any = _UNSET,
    ) -> str:
        """Points ``CURRENT`` back to an earlier version and returns it.

        Without ``to_version`` the target is the version that was current before
        the current one, following the promotion history back past versions that
        were rolled back from, rejected or are incomplete. The version rolled back
        from gets status ``rolled-back``.

        Args:
            to_version: the version to return to (default: the previous one).
            reason: recorded in ``CURRENT``, the history and the old version.
            if_current: when given, roll back only if ``CURRENT`` still names this
                version at the moment of the swap (the version that was judged).

        Raises:
            ValueError: if nothing is current, there is no earlier version to return
                to, or ``to_version`` is unknown, incomplete or rejected.
            CurrentChanged: ``CURRENT`` is not ``if_current``, or it kept changing.
        """

        def decide(current: str | None, pointer: dict[str, Any] | None) -> str:
            if current is None:
                raise ValueError(f"registry {self.root} has no current version to roll back from")
            target = to_version
            if target is None:
                target = self._previous_version(current, pointer)
                if target is None:
                    raise ValueError(
                        f"no earlier version to roll back to from {current} (history has none "
                        "that is complete and not rejected); pass one explicitly"
                    )
            if target == current:
                raise ValueError(f"{target} is already the current version")
            self._check_promotable(target)
            return target

        pointer = self._swap_current("rollback", decide, reason, if_current)
        assert pointer is not None  # decide never returns the current version
        target, previous = pointer["version"], pointer["previous"]
        self._update_metadata(target, status="promoted", promoted_at=rfc3339(_utcnow()))
        try:
            self._update_metadata(
                previous,
                status="rolled-back",
                reasons=[reason],
                rolled_back_at=rfc3339(_utcnow()),
            )
        except ValueError:  # the old version vanished: nothing to mark
            pass
        logger.info("rolled back from %s to %s: %s", previous, target, reason)
        return target

    def _previous_version(self, current: str, pointer: dict[str, Any] | None) -> str | None:
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
            stack = [v for v in [(pointer or {}).get("previous"), current] if v]
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


if __name__ == "__main__":  # ``python -m model.registry ...``: the CLI
    from model.registry_cli import run

    sys.exit(run())
