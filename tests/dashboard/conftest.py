"""Fixtures of the dashboard tests: a registry with versions (no models inside)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.registry import ModelRegistry


def fake_registry(root: Path, count: int = 2) -> tuple[ModelRegistry, list[str]]:
    """A registry with ``count`` complete versions (metadata only), the newest promoted.

    The dashboard reads metadata and ``CURRENT`` only, so no model files are written.
    """
    versions = []
    for i in range(count):
        version = f"v2026010{i + 1}T000000Z-00000{i}"
        path = root / "versions" / version
        path.mkdir(parents=True)
        metadata = {
            "version": version,
            "created_at": f"2026-01-0{i + 1}T00:00:00Z",
            "status": "passed",
            "metrics": {"accuracy": 0.9 + i / 100, "log_loss": 0.3},
            "reasons": [f"quality: accuracy 0.9{i} >= floor 0.8"],
            "run_id": f"run-t{i}",
            "data_validation": {"anomalies": 0, "rows": 1000},
        }
        (path / "metadata.json").write_text(json.dumps(metadata))
        (path / "_COMPLETE").write_text("{}")
        versions.append(version)
    registry = ModelRegistry(str(root))
    for version in versions:
        registry.promote(version, reason="test")
    return registry, versions


@pytest.fixture
def registry(tmp_path):
    return fake_registry(tmp_path / "registry")


# The control-plane tests' world: a fresh retrain topic + subscription and BigQuery tables.
from tests.trainer.conftest import world  # noqa: E402, F401 (fixture)
