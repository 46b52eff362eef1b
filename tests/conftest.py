"""Session fixtures: fake credentials and the local Pub/Sub and BigQuery emulators.

Each emulator fixture starts its emulator on free ports (via local/emulators.py)
once per session and stops it at the end. With ``REUSE_EMULATORS=1`` and
``PUBSUB_EMULATOR_HOST`` / ``BIGQUERY_EMULATOR_HOST`` pointing at healthy
emulators, those are reused instead (faster while developing).

Tests that need the emulators carry ``@pytest.mark.emulators``. If the Pub/Sub
emulator is not installed, its tests are skipped with install instructions
(and fail in CI, where ``CI`` is set).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from local import emulators
from local.credentials import ENV_VAR as CREDENTIALS_ENV_VAR
from local.credentials import ensure_fake_credentials
from tests.gcs_fixtures import gcs_bucket, gcs_emulator  # noqa: F401 (fixtures)

PROJECT = "local-project"


@contextlib.contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    """Sets environment variables for the block, then restores the old values."""
    previous = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _reuse(env_var: str) -> bool:
    """Whether REUSE_EMULATORS=1 and ``env_var`` names a healthy emulator."""
    if os.environ.get("REUSE_EMULATORS") != "1" or not os.environ.get(env_var):
        return False
    name = emulators.PUBSUB if env_var == "PUBSUB_EMULATOR_HOST" else emulators.BIGQUERY
    return bool(emulators.healthy_from_env({env_var: os.environ[env_var]}).get(name))


def _unavailable(error: Exception) -> None:
    message = f"emulator not available: {error}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def gcp_project() -> str:
    """The project id every local test uses (Beam wants >= 6 characters)."""
    return PROJECT


@pytest.fixture(scope="session")
def emulator_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the session's emulators keep logs, PID files and credentials."""
    return tmp_path_factory.mktemp("emulators")


@pytest.fixture(scope="session")
def fake_credentials(emulator_state_dir: Path, gcp_project: str) -> Iterator[Path]:
    """Writes fake ADC credentials and sets GOOGLE_APPLICATION_CREDENTIALS."""
    path = ensure_fake_credentials(emulator_state_dir, gcp_project)
    with _environ({CREDENTIALS_ENV_VAR: str(path)}):
        yield path


@pytest.fixture(scope="session")
def pubsub_emulator(fake_credentials: Path, emulator_state_dir: Path) -> Iterator[str]:
    """A Pub/Sub emulator; yields ``host:port`` and sets PUBSUB_EMULATOR_HOST."""
    if _reuse("PUBSUB_EMULATOR_HOST"):
        yield os.environ["PUBSUB_EMULATOR_HOST"]
        return
    try:
        emulators.find_pubsub_emulator()
    except emulators.EmulatorNotInstalledError as e:
        _unavailable(e)
    with emulators.pubsub_emulator(emulator_state_dir) as info, _environ(info.env):
        yield info.env["PUBSUB_EMULATOR_HOST"]


@pytest.fixture(scope="session")
def _bigquery_emulator_env(
    fake_credentials: Path, emulator_state_dir: Path, gcp_project: str
) -> Iterator[dict[str, str]]:
    if _reuse("BIGQUERY_EMULATOR_HOST"):
        host = os.environ["BIGQUERY_EMULATOR_HOST"]
        env = {"BIGQUERY_EMULATOR_HOST": host if "://" in host else f"http://{host}"}
        grpc = os.environ.get("BIGQUERY_EMULATOR_GRPC_HOST")
        if grpc:
            env["BIGQUERY_EMULATOR_GRPC_HOST"] = grpc
        with _environ(env):
            yield env
        return
    try:
        emulators.ensure_duckdb_spatial()
    except emulators.EmulatorNotInstalledError as e:
        _unavailable(e)
    with (
        emulators.bigquery_emulator(emulator_state_dir, project=gcp_project) as info,
        _environ(info.env),
    ):
        yield info.env


@pytest.fixture(scope="session")
def bigquery_emulator(_bigquery_emulator_env: dict[str, str]) -> str:
    """A BigQuery emulator; returns ``http://host:port`` (BIGQUERY_EMULATOR_HOST is set)."""
    return _bigquery_emulator_env["BIGQUERY_EMULATOR_HOST"]


@pytest.fixture(scope="session")
def bigquery_emulator_grpc(_bigquery_emulator_env: dict[str, str]) -> str:
    """The BigQuery emulator's gRPC (Storage Read/Write) endpoint, ``host:port``."""
    grpc = _bigquery_emulator_env.get("BIGQUERY_EMULATOR_GRPC_HOST")
    if not grpc:
        pytest.fail(
            "REUSE_EMULATORS=1 needs BIGQUERY_EMULATOR_GRPC_HOST=host:port for the gRPC port",
            pytrace=False,
        )
    return grpc


@pytest.fixture
def bigquery_client(bigquery_emulator: str, gcp_project: str):
    """A google-cloud-bigquery client for the emulator."""
    from dataset.resources import bigquery_client as make_client

    client = make_client(gcp_project)
    yield client
    client.close()


@pytest.fixture
def unique_name() -> str:
    """A fresh name for a dataset/topic/subscription, so tests do not collide."""
    return f"t_{uuid.uuid4().hex[:12]}"
