"""A registry with two real (input-dependent) traffic models for the service tests."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest


def wait_for(condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition"):
    """Polls ``condition`` until true or fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout:g}s waiting for {what}")


@pytest.fixture(scope="session")
def traffic_registry(tmp_path_factory):
    """``(root, v1, v2)``: two differently seeded traffic models, v1 current."""
    from model.keras_model import build_model
    from model.registry import ModelRegistry
    from tests.helpers import TRAFFIC

    root = str(tmp_path_factory.mktemp("serving") / "registry")
    registry = ModelRegistry(root)
    v1 = registry.publish(build_model(TRAFFIC, seed=1), {"note": "seed 1"}, status="passed")
    v2 = registry.publish(build_model(TRAFFIC, seed=2), {"note": "seed 2"}, status="passed")
    registry.promote(v1)
    return root, v1, v2
