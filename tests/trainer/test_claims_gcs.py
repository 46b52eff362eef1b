"""The claim's gs:// path against the Cloud Storage emulator (generation preconditions).

The ``gcs_bucket`` fixture is ``tests/gcs_fixtures.py`` (imported by ``tests/conftest.py``).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.trainer.test_claims import RACER
from trainer import claims

pytestmark = pytest.mark.emulators


def test_gcs_trainers_racing_for_one_run_exactly_one_wins(gcs_bucket):
    root = f"{gcs_bucket}/registry"
    racers = [
        subprocess.Popen([sys.executable, "-c", RACER, root, f"attempt-{i}"]) for i in range(6)
    ]
    codes = [p.wait(120) for p in racers]
    assert sorted(codes) == [0] + [claims.REFUSED_EXIT_CODE] * 5
    owner = claims.read(root, "run-x")
    assert owner["attempt_id"] == f"attempt-{codes.index(0)}"
    assert claims.release(root, "run-x", "someone-else") is False
    assert claims.release(root, "run-x", owner["attempt_id"]) is True
    assert claims.read(root, "run-x") is None
    claims.claim(root, "run-x", "attempt-again")  # free again after the release
