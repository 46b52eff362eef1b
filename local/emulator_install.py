"""Where the local emulators come from: finding, building their commands, installing.

* Pub/Sub: the official Java emulator from the Google Cloud SDK, found through
  ``PUBSUB_EMULATOR_BIN``, ``gcloud info`` or the usual SDK locations.
* BigQuery: ``bqemulator`` (PyPI), which loads DuckDB's spatial extension at start;
  ``ensure_duckdb_spatial`` places it offline from the ``duckdb-extension-spatial``
  wheel. ``local.emulators`` starts and stops them.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

PUBSUB_INSTALL_HINT = (
    "The Pub/Sub emulator is not installed. Install it with\n"
    "    gcloud components install pubsub-emulator\n"
    "or, where the Cloud SDK comes from Debian/Ubuntu packages,\n"
    "    sudo apt-get install google-cloud-cli-pubsub-emulator\n"
    "(it needs a Java runtime, 11 or newer). Or point PUBSUB_EMULATOR_BIN at the\n"
    "cloud-pubsub-emulator start script."
)


class EmulatorNotInstalledError(RuntimeError):
    """An emulator (or what it needs to run) is not installed."""


def find_pubsub_emulator() -> Path:
    """Locates the ``cloud-pubsub-emulator`` start script of the Cloud SDK.

    Looks at ``$PUBSUB_EMULATOR_BIN``, then the SDK root reported by ``gcloud``,
    then the usual package locations.

    Raises:
        EmulatorNotInstalledError: with install instructions.
    """
    override = os.environ.get("PUBSUB_EMULATOR_BIN")
    if override:
        path = Path(override)
        if not path.is_file():
            raise EmulatorNotInstalledError(
                f"PUBSUB_EMULATOR_BIN={override} does not exist.\n{PUBSUB_INSTALL_HINT}"
            )
        return path
    roots: list[Path] = []
    gcloud = shutil.which("gcloud")
    if gcloud:
        try:
            out = subprocess.run(
                [gcloud, "info", "--format=value(installation.sdk_root)"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            ).stdout.strip()
            if out:
                roots.append(Path(out))
        except (OSError, subprocess.TimeoutExpired) as e:
            logger.warning("`gcloud info` failed (%s); trying the usual SDK locations", e)
        # .../google-cloud-sdk/bin/gcloud -> .../google-cloud-sdk
        roots.append(Path(gcloud).resolve().parent.parent)
    roots += [
        Path("/usr/lib/google-cloud-sdk"),
        Path("/usr/share/google-cloud-sdk"),
        Path("/opt/google-cloud-sdk"),
        Path.home() / "google-cloud-sdk",
    ]
    for root in roots:
        script = root / "platform" / "pubsub-emulator" / "bin" / "cloud-pubsub-emulator"
        if script.is_file():
            if not shutil.which("java") and not os.environ.get("JAVA_HOME"):
                raise EmulatorNotInstalledError(
                    f"Found the Pub/Sub emulator at {script}, but no Java runtime "
                    "(`java` on PATH or JAVA_HOME). Install one, e.g. "
                    "`sudo apt-get install default-jre-headless`."
                )
            return script
    where = "gcloud not found on PATH" if not gcloud else f"searched {', '.join(map(str, roots))}"
    raise EmulatorNotInstalledError(f"{PUBSUB_INSTALL_HINT}\n({where})")


def pubsub_emulator_command(host: str, port: int) -> list[str]:
    """The command line that runs the Pub/Sub emulator in the foreground."""
    return [str(find_pubsub_emulator()), f"--host={host}", f"--port={port}"]


def bigquery_emulator_command(
    host: str, rest_port: int, grpc_port: int, project: str, log_level: str = "info"
) -> list[str]:
    """The command line that runs bqemulator (ephemeral, in memory) in the foreground.

    Through ``local/bqemulator_main.py``: bqemulator's own CLI without its
    table copy on every write (see that module).
    """
    try:
        import bqemulator  # noqa: F401
    except ImportError as e:
        raise EmulatorNotInstalledError(
            "bqemulator is not installed in this Python environment; run "
            "`pip install -r requirements-dev.txt` (or ./run_tests.sh, which does it)."
        ) from e
    return [
        sys.executable,
        str(Path(__file__).with_name("bqemulator_main.py")),
        "start",
        "--project",
        project,
        "--rest-host",
        host,
        "--rest-port",
        str(rest_port),
        "--grpc-host",
        host,
        "--grpc-port",
        str(grpc_port),
        "--log-level",
        log_level,
        "--log-format",
        "console",
    ]


def ensure_duckdb_spatial() -> None:
    """Installs DuckDB's spatial extension from the local wheel if it is missing.

    bqemulator loads the extension at start; DuckDB downloads it unless it is
    already under ``~/.duckdb/extensions/<version>/<platform>/``, and this
    machine has no internet. ``duckdb-extension-spatial`` ships the file.

    Raises:
        EmulatorNotInstalledError: if duckdb or the extension wheel is missing.
    """
    try:
        import duckdb
        import duckdb_extensions
    except ImportError as e:
        raise EmulatorNotInstalledError(
            f"{e.name} is not installed; run `pip install -r requirements-dev.txt`"
        ) from e
    con = duckdb.connect()
    try:
        row = con.sql(
            "SELECT installed FROM duckdb_extensions() WHERE extension_name = 'spatial'"
        ).fetchone()
        if row and row[0]:
            return
        logger.info("Installing DuckDB's spatial extension from duckdb-extension-spatial")
        try:
            duckdb_extensions.import_extension("spatial", con=con)
        except ModuleNotFoundError as e:
            raise EmulatorNotInstalledError(
                "duckdb-extension-spatial is not installed; run "
                "`pip install -r requirements-dev.txt`"
            ) from e
    finally:
        con.close()
