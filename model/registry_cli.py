"""Command line for the model registry (``python -m model.registry`` runs this).

Usage::

    python -m model.registry --registry PATH list
    python -m model.registry --registry PATH show VERSION
    python -m model.registry --registry PATH current [--json]
    python -m model.registry --registry PATH promote VERSION [--reason TEXT] [--if-current V]
    python -m model.registry --registry PATH rollback [--to VERSION] [--reason TEXT]
                                                      [--if-current V]
    python -m model.registry --registry PATH set-status VERSION STATUS [--reason TEXT ...]
    python -m model.registry --registry PATH history

``--registry`` defaults to ``$MODEL_REGISTRY``; PATH is a directory or
``gs://bucket/prefix``. ``--if-current`` makes the change only if ``CURRENT``
still names that version (``none``: nothing current yet). Errors (unknown
version, empty registry, refused promotion, ``CURRENT`` changed) print
``error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from model.registry import (
    STATUSES,
    CurrentChanged,
    ModelRegistry,
    VersionInfo,
    _dumps,
    format_metrics,
)


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


def _if_current(value: str | None) -> dict[str, Any]:
    """``--if-current`` as keyword arguments (``none`` means nothing current yet)."""
    if value is None:
        return {}
    return {"if_current": None if value.lower() == "none" else value}


def build_parser() -> argparse.ArgumentParser:
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
    if_current_help = "change only if CURRENT is still this version ('none': nothing current)"
    p = sub.add_parser("promote", help="make a version current")
    p.add_argument("version")
    p.add_argument("--reason", default="manual")
    p.add_argument("--if-current", default=None, metavar="VERSION", help=if_current_help)
    p = sub.add_parser("rollback", help="return to the previous (or a given) version")
    p.add_argument("--to", dest="to_version", default=None, metavar="VERSION")
    p.add_argument("--reason", default="manual rollback")
    p.add_argument("--if-current", default=None, metavar="VERSION", help=if_current_help)
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
        registry.promote(args.version, reason=args.reason, **_if_current(args.if_current))
        print(f"current: {args.version} (was {previous or 'none'})", file=out)
    elif args.command == "rollback":
        previous = registry.current_version()
        version = registry.rollback(
            args.to_version, reason=args.reason, **_if_current(args.if_current)
        )
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
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.registry:
        parser.error("--registry is required (or set MODEL_REGISTRY)")
    try:
        _run(args)
    except (_CliError, ValueError, CurrentChanged) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    """``main`` with logging set up for a terminal (``python -m`` entry)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return main(argv)


if __name__ == "__main__":
    sys.exit(run())
