"""Fake ADC credentials: idempotent, and usable by google.auth without network."""

from __future__ import annotations

import json

import google.auth
import pytest

from local.credentials import ENV_VAR, ensure_fake_credentials


def test_writes_token_and_far_expiry(tmp_path):
    path = ensure_fake_credentials(tmp_path / "state")
    info = json.loads(path.read_text())
    assert info["type"] == "authorized_user"
    assert info["token"] == "local-token"
    assert info["expiry"].startswith("2999-")
    assert path.is_absolute()


def test_idempotent(tmp_path):
    first = ensure_fake_credentials(tmp_path)
    mtime = first.stat().st_mtime_ns
    second = ensure_fake_credentials(tmp_path)
    assert first == second
    assert second.stat().st_mtime_ns == mtime


def test_google_auth_accepts_it_without_refreshing(tmp_path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(ENV_VAR, str(ensure_fake_credentials(tmp_path)))
    credentials, _ = google.auth.default()
    # valid == has a token that is not expired: no call to oauth2.googleapis.com
    assert credentials.valid
    assert credentials.token == "local-token"
