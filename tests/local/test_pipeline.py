"""local.pipeline: the accelerated local entry point hands pipelines.main its arguments."""

from __future__ import annotations

import pytest

from local import accelerate, pipeline


@pytest.fixture(autouse=True)
def _restored():
    accelerate.restore()
    yield
    accelerate.restore()


@pytest.fixture
def ran(monkeypatch) -> list:
    calls: list = []
    import pipelines.main

    monkeypatch.setattr(
        pipelines.main, "run", lambda argv: calls.append((argv, accelerate.applied()))
    )
    return calls


def test_own_options_are_removed_and_the_rest_passed_on(ran, monkeypatch):
    monkeypatch.delenv("LOCAL_ACCELERATE", raising=False)
    monkeypatch.delenv(accelerate.PATCHES_ENV, raising=False)
    pipeline.main(["--runner=DirectRunner", "--pubsub_pull_size", "123", "--bq_dataset=x"])
    [(argv, applied)] = ran
    assert argv == ["--runner=DirectRunner", "--bq_dataset=x"]
    assert applied == sorted(accelerate.PATCHES)
    assert accelerate._pull_size == 123


@pytest.mark.parametrize(
    ("args", "env"), [(["--no_accelerate"], {}), ([], {"LOCAL_ACCELERATE": "0"})]
)
def test_acceleration_can_be_turned_off(ran, monkeypatch, args, env):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    pipeline.main([*args, "--streaming"])
    assert ran == [(["--streaming"], [])]


def test_a_bad_pull_size_stops_with_a_message(ran, monkeypatch):
    monkeypatch.setenv(accelerate.PULL_SIZE_ENV, "-5")
    with pytest.raises(SystemExit, match=accelerate.PULL_SIZE_ENV):
        pipeline.main([])
    assert ran == []
