"""Bookkeeping for the local runner's patches: replace attributes, remember, undo.

Shared by ``local.accelerate`` and ``local.accelerate_state`` (which patch Beam's
legacy DirectRunner for local runs only), so both record their changes in one place
and ``local.accelerate.restore`` undoes them all.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from typing import Any

_MISSING = object()  # the attribute was inherited, not the owner's own
_originals: list[tuple[Any, str, Any]] = []  # (owner, attribute, original value)


def source_sha256(fn: Callable) -> str:
    """The sha256 of a function's source (to detect a changed Beam internal)."""
    return hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()


def set_attr(owner: Any, name: str, value: Any) -> None:
    """Replaces ``owner.name``, remembering the original for ``undo_all``."""
    if not any(o is owner and n == name for o, n, _ in _originals):
        _originals.append((owner, name, vars(owner).get(name, _MISSING)))
    setattr(owner, name, value)


def original(owner: Any, name: str) -> Any:
    """``owner.name`` as it was before any patch (its current value if unpatched)."""
    for o, n, value in _originals:
        if o is owner and n == name and value is not _MISSING:
            return value
    return getattr(owner, name)


def undo_all() -> None:
    """Puts back every replaced attribute, newest first."""
    for owner, name, value in reversed(_originals):
        if value is _MISSING:
            delattr(owner, name)
        else:
            setattr(owner, name, value)
    _originals.clear()


def missing_attributes(checks: dict[Any, list[str]]) -> list[str]:
    """``"Owner.name is gone"`` for each listed attribute an owner no longer has."""
    return [
        f"{owner.__name__}.{name} is gone"
        for owner, names in checks.items()
        for name in names
        if not hasattr(owner, name)
    ]


def missing_source(expected: list[tuple[Callable, list[str]]]) -> list[str]:
    """``"fn changed: no [...]"`` for each function whose source lacks a needle."""
    return [
        f"{fn.__qualname__} changed: no {needles}"
        for fn, needles in expected
        if not all(needle in inspect.getsource(fn) for needle in needles)
    ]


def changed_sources(owners: dict[str, Any], hashes: dict[str, str], review: str) -> list[str]:
    """What changed among Beam methods a patch copies or relies on, by source hash.

    Args:
        owners: the first component of each qualified name -> the class it names.
        hashes: ``"Owner.name"`` (or ``"Owner.Inner.name"``) -> the sha256 of that
            method's source as the patch was written for (before any patch).
        review: what to review when one changed (named in the message).

    Returns:
        ``"X is gone"`` or ``"X changed (source hash); review ..."`` per method.
    """
    problems = []
    for qualified, expected in hashes.items():
        first, *path = qualified.split(".")
        owner = owners[first]
        for part in path[:-1]:
            owner = getattr(owner, part, None)
        if owner is None or not hasattr(owner, path[-1]):
            problems.append(f"{qualified} is gone")
        elif source_sha256(original(owner, path[-1])) != expected:
            problems.append(f"{qualified} changed (source hash); review {review}")
    return problems
