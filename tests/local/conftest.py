"""Fixtures shared by the tests of the local runner's patches."""

from __future__ import annotations

import pytest

from local import accelerate


@pytest.fixture
def unpatched_runner():
    """Every ``local.accelerate`` patch undone before and after the test."""
    accelerate.restore()
    yield
    accelerate.restore()
