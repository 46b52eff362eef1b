"""Fake Application Default Credentials for the local emulators.

Google clients look up credentials even when they talk to an emulator. An
``authorized_user`` file with dummy secrets *and* a cached access token that
expires far in the future satisfies ``google.auth.default()`` without any
network call; without ``token``/``expiry`` the client tries to refresh the
token at oauth2.googleapis.com and hangs for minutes on an offline machine.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

CREDENTIALS_FILENAME = "fake-adc.json"
ENV_VAR = "GOOGLE_APPLICATION_CREDENTIALS"


def fake_credentials_info(project: str = "local-project") -> dict[str, str]:
    """Returns the content of the fake ``authorized_user`` credentials file."""
    return {
        "type": "authorized_user",
        "client_id": "local-emulator",
        "client_secret": "local-emulator",
        "refresh_token": "local-emulator",
        "token": "local-token",
        "expiry": "2999-01-01T00:00:00Z",
        "quota_project_id": project,
    }


def ensure_fake_credentials(
    state_dir: str | os.PathLike[str], project: str = "local-project"
) -> Path:
    """Writes the fake ADC file under ``state_dir`` (only if missing or different).

    Args:
        state_dir: Directory for local state, created if needed.
        project: Project id recorded as the quota project.

    Returns:
        The absolute path of the credentials file, for ``GOOGLE_APPLICATION_CREDENTIALS``.
    """
    directory = Path(state_dir).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CREDENTIALS_FILENAME
    content = json.dumps(fake_credentials_info(project), indent=2) + "\n"
    if path.exists() and path.read_text(encoding="utf-8") == content:
        return path
    tmp = path.with_suffix(".tmp")
    tmp.write_text(content, encoding="utf-8")
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    logger.info("Wrote fake credentials to %s", path)
    return path
