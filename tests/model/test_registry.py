"""Tests of the versioned model registry (model/registry.py) and its CLI (registry_cli)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dataset.config import load_config
from model.features import encode_batch
from model.registry import (
    COMPLETE_MARKER,
    ModelRegistry,
    VersionInfo,
    format_metrics,
)
from model.registry_cli import main
from simulator.traffic import TrafficSimulator

TRAFFIC = load_config("configs/traffic.yaml")
VERSION_RE = re.compile(r"^v\d{8}T\d{6}Z-[0-9a-f]{6}$")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def keras_model():
    from model.keras_model import build_model

    return build_model(TRAFFIC, seed=3)


@pytest.fixture(scope="module")
def sample_batch() -> np.ndarray:
    rows = TrafficSimulator(seed=5).history(64, 1_700_000_400.0, rate=10)
    return encode_batch(rows, TRAFFIC)


def _meta(**extra) -> dict:
    doc = {
        "dataset": "traffic",
        "training_data": {"start": "2026-01-01T00:00:00Z", "end": "2026-01-01T01:00:00Z"},
        "metrics": {"accuracy": np.float32(0.9), "log_loss": 0.25},
    }
    doc["training_data"]["rows"] = 100
    doc.update(extra)
    return doc


def test_publish_writes_the_layout_and_metadata(tmp_path, keras_model):
    registry = ModelRegistry(str(tmp_path / "reg"))
    version = registry.publish(keras_model, _meta(), status="candidate")

    assert VERSION_RE.match(version)
    vdir = tmp_path / "reg" / "versions" / version
    assert (vdir / "model.keras").is_file()
    assert (vdir / "saved_model" / "saved_model.pb").is_file()
    assert (vdir / COMPLETE_MARKER).is_file()
    meta = json.loads((vdir / "metadata.json").read_text())
    assert meta["version"] == version
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", meta["created_at"])
    assert meta["status"] == "candidate"
    assert meta["reasons"] == []
    assert meta["parent_version"] is None
    assert meta["metrics"]["accuracy"] == pytest.approx(0.9)  # numpy value serialized
    assert meta["training_data"]["rows"] == 100
    assert not [p for p in (tmp_path / "reg" / "versions").iterdir() if p.name.startswith(".")]

    info = registry.get(version)
    assert isinstance(info, VersionInfo)
    assert (info.version, info.status, info.path) == (version, "candidate", str(vdir))
    assert info.keras_path == registry.keras_path(version) == str(vdir / "model.keras")
    assert registry.saved_model_path(version) == str(vdir / "saved_model")
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.status = "passed"  # type: ignore[misc]

    # The next version records the current one as its parent.
    registry.promote(version)
    child = registry.publish(keras_model, _meta())
    assert registry.get(child).metadata["parent_version"] == version


def test_partial_versions_are_invisible(tmp_path, keras_model):
    registry = ModelRegistry(str(tmp_path))
    good = registry.publish(keras_model, _meta())
    versions = tmp_path / "versions"
    # A crash before the rename leaves a hidden temporary directory ...
    tmp_dir = versions / ".tmp-0123456789abcdef"
    tmp_dir.mkdir()
    (tmp_dir / "model.keras").write_bytes(b"partial")
    (tmp_dir / COMPLETE_MARKER).write_text("{}")  # even with a marker: dot-dirs are ignored
    # ... a crash after the rename but before the marker leaves an unmarked one.
    partial = "v20000101T000000Z-abcdef"
    (versions / partial).mkdir()
    (versions / partial / "metadata.json").write_text(json.dumps({"status": "candidate"}))

    assert [v.version for v in registry.versions()] == [good]
    with pytest.raises(ValueError, match="incomplete"):
        registry.get(partial)
    with pytest.raises(ValueError, match="incomplete"):
        registry.promote(partial)
    with pytest.raises(ValueError, match="invalid version"):
        registry.get(".tmp-0123456789abcdef")
    assert registry.current_version() is None


def test_versions_sort_oldest_first_even_within_one_second(tmp_path, keras_model):
    registry = ModelRegistry(str(tmp_path))
    published = [registry.publish(keras_model, _meta(n=i)) for i in range(3)]
    assert len(set(published)) == 3
    assert published == sorted(published)
    infos = registry.versions()
    assert [v.version for v in infos] == published
    assert [v.metadata["n"] for v in infos] == [0, 1, 2]


def test_empty_registry(tmp_path):
    registry = ModelRegistry(str(tmp_path / "absent"))
    assert registry.versions() == []
    assert registry.current_version() is None
    assert registry.current() is None
    assert registry.history() == []
    with pytest.raises(ValueError, match="has no versions"):
        registry.get("v20260101T000000Z-000000")
    with pytest.raises(ValueError, match="no current version"):
        registry.rollback()


def test_promote_rollback_and_history(tmp_path, keras_model):
    registry = ModelRegistry(str(tmp_path))
    a, b, c = (registry.publish(keras_model, _meta()) for _ in range(3))

    registry.promote(a, reason="bootstrap")
    registry.promote(b, reason="better")
    registry.promote(c, reason="even better")
    assert registry.current_version() == c
    assert registry.current().status == "promoted"
    pointer = json.loads((tmp_path / "CURRENT").read_text())
    assert pointer["version"] == c and pointer["previous"] == b
    assert pointer["reason"] == "even better" and pointer["updated_at"].endswith("Z")
    registry.promote(c)  # already current: no new history event
    assert len(registry.history()) == 3

    assert registry.rollback(reason="c misbehaves") == b
    assert registry.current_version() == b
    assert registry.get(c).status == "rolled-back"
    assert registry.get(c).metadata["reasons"] == ["c misbehaves"]
    assert registry.rollback() == a  # follows the promotion history back, not a toggle
    with pytest.raises(ValueError, match="no earlier version"):
        registry.rollback()
    assert registry.rollback(to_version=c, reason="it was fine") == c  # explicit target
    assert registry.current_version() == c

    history = registry.history()
    assert [(e["action"], e["version"], e["previous"]) for e in history] == [
        ("promote", a, None),
        ("promote", b, a),
        ("promote", c, b),
        ("rollback", b, c),
        ("rollback", a, b),
        ("rollback", c, a),
    ]
    assert all(e["at"].endswith("Z") for e in history)
    assert history[3]["reason"] == "c misbehaves"


def test_rollback_skips_rejected_versions(tmp_path, keras_model):
    registry = ModelRegistry(str(tmp_path))
    a, b, c = (registry.publish(keras_model, _meta()) for _ in range(3))
    for v in (a, b, c):
        registry.promote(v)
    registry.set_status(b, "rejected", ["found broken later"])
    assert registry.rollback() == a


def test_promote_refuses_rejected_and_unknown_versions(tmp_path, keras_model):
    registry = ModelRegistry(str(tmp_path))
    good = registry.publish(keras_model, _meta())
    bad = registry.publish(keras_model, _meta())
    info = registry.set_status(bad, "rejected", ["accuracy 0.61 < floor 0.70"])
    assert info.status == "rejected"
    assert registry.get(bad).metadata["reasons"] == ["accuracy 0.61 < floor 0.70"]

    with pytest.raises(ValueError, match=r"rejected \(accuracy 0.61 < floor 0.70\)"):
        registry.promote(bad)
    with pytest.raises(ValueError, match=f"unknown version nope .*known: {good}, {bad}"):
        registry.promote("nope")
    registry.promote(good)
    with pytest.raises(ValueError, match="rejected"):
        registry.rollback(to_version=bad)
    assert registry.current_version() == good

    with pytest.raises(ValueError, match="use promote"):
        registry.set_status(good, "promoted", [])
    with pytest.raises(ValueError, match="cannot set status 'great'"):
        registry.set_status(good, "great", [])
    with pytest.raises(ValueError, match="unknown publish status"):
        registry.publish(keras_model, _meta(), status="promoted")
    assert registry.set_status(bad, "passed", ["re-evaluated"]).status == "passed"
    registry.promote(bad)  # no longer rejected


def test_current_pointer_is_replaced_by_rename(tmp_path, keras_model, monkeypatch):
    from model import storage as storage_module

    registry = ModelRegistry(str(tmp_path))
    a = registry.publish(keras_model, _meta())
    b = registry.publish(keras_model, _meta())

    real_replace = os.replace
    calls = []

    def spy(src, dst):
        calls.append((str(src), str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(storage_module.os, "replace", spy)
    registry.promote(a)
    current_file = str(tmp_path / "CURRENT")
    sources = [src for src, dst in calls if dst == current_file]
    assert len(sources) == 1
    assert os.path.dirname(sources[0]) == str(tmp_path)
    assert os.path.basename(sources[0]).startswith(".")

    # A crash before the rename leaves the old pointer whole (and no temp file).
    def crash(src, dst):
        if str(dst) == current_file:
            raise OSError("crash before rename")
        return real_replace(src, dst)

    monkeypatch.setattr(storage_module.os, "replace", crash)
    with pytest.raises(OSError, match="crash before rename"):
        registry.promote(b)
    assert registry.current_version() == a
    assert json.loads((tmp_path / "CURRENT").read_text())["version"] == a
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [".lock", "CURRENT", "history", "versions"]


def test_load_keras_roundtrip_gives_identical_predictions(tmp_path, keras_model, sample_batch):
    registry = ModelRegistry(str(tmp_path))
    version = registry.publish(keras_model, _meta())
    expected = keras_model.predict(sample_batch, verbose=0)

    loaded = registry.load_keras(version)
    np.testing.assert_array_equal(loaded.predict(sample_batch, verbose=0), expected)


def test_saved_model_has_a_serving_default_signature(tmp_path, keras_model, sample_batch):
    import tensorflow as tf

    registry = ModelRegistry(str(tmp_path))
    version = registry.publish(keras_model, _meta())
    loaded = tf.saved_model.load(registry.saved_model_path(version))
    assert "serving_default" in loaded.signatures
    serve = loaded.signatures["serving_default"]
    (name,) = serve.structured_input_signature[1]  # one named float input
    outputs = serve(**{name: tf.constant(sample_batch)})
    (values,) = outputs.values()
    values = values.numpy()
    assert values.shape == (len(sample_batch), 1)
    assert np.all(np.isfinite(values)) and np.all((values >= 0) & (values <= 1))
    np.testing.assert_allclose(values, keras_model.predict(sample_batch, verbose=0), atol=1e-5)


# ------------------------------------------------------------------ CLI


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_list_show_current_promote_rollback(tmp_path, keras_model, capsys):
    root = str(tmp_path)
    registry = ModelRegistry(root)
    a = registry.publish(keras_model, _meta())
    b = registry.publish(keras_model, _meta(metrics={"accuracy": 0.95, "log_loss": 0.12}))
    registry.promote(a, reason="bootstrap")

    code, out, _ = _cli(capsys, "--registry", root, "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["VERSION", "STATUS", "CREATED", "ROWS", "METRICS"]
    row_a = next(line for line in lines if a in line)
    row_b = next(line for line in lines if b in line)
    assert row_a.startswith("*") and not row_b.startswith("*")
    assert "promoted" in row_a and "candidate" in row_b
    assert "accuracy=0.95" in row_b and "log_loss=0.12" in row_b and " 100 " in row_b
    assert f"current: {a}" in out

    code, out, _ = _cli(capsys, "--registry", root, "current")
    assert (code, out.strip()) == (0, a)
    code, out, _ = _cli(capsys, "--registry", root, "current", "--json")
    assert json.loads(out)["reason"] == "bootstrap"

    code, out, _ = _cli(capsys, "--registry", root, "show", b)
    shown = json.loads(out)
    assert code == 0 and shown["version"] == b and shown["current"] is False
    assert shown["metadata"]["metrics"]["accuracy"] == 0.95
    assert shown["keras_path"].endswith("model.keras")

    code, out, _ = _cli(capsys, "--registry", root, "promote", b, "--reason", "by hand")
    assert code == 0 and f"current: {b} (was {a})" in out
    assert registry.current_pointer()["reason"] == "by hand"
    code, out, _ = _cli(capsys, "--registry", root, "history")
    assert code == 0 and "by hand" in out and len(out.splitlines()) == 2
    code, out, _ = _cli(capsys, "--registry", root, "rollback")
    assert code == 0 and f"current: {a} (rolled back from {b})" in out
    code, out, _ = _cli(capsys, "--registry", root, "rollback", "--to", b)
    assert code == 0 and registry.current_version() == b
    code, out, _ = _cli(capsys, "--registry", root, "set-status", a, "rejected", "--reason", "x")
    assert code == 0 and registry.get(a).status == "rejected"


def test_cli_errors_exit_2(tmp_path, keras_model, capsys):
    empty = str(tmp_path / "empty")
    for args in (["list"], ["current"], ["rollback"], ["show", "v1"], ["history"]):
        code, out, err = _cli(capsys, "--registry", empty, *args)
        assert code == 2, args
        assert err.startswith("error: ") and (
            "no versions" in err or "no current" in err or "no promotion history" in err
        ), err

    root = str(tmp_path / "reg")
    registry = ModelRegistry(root)
    v = registry.publish(keras_model, _meta())
    code, _, err = _cli(capsys, "--registry", root, "show", "v20990101T000000Z-ffffff")
    assert code == 2 and f"known: {v}" in err
    code, _, err = _cli(capsys, "--registry", root, "promote", "nope")
    assert code == 2 and "unknown version nope" in err
    registry.set_status(v, "rejected", ["bad"])
    code, _, err = _cli(capsys, "--registry", root, "promote", v)
    assert code == 2 and "rejected" in err


def test_cli_as_a_module_exits_2_with_a_message(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "model.registry", "--registry", str(tmp_path), "current"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 2
    assert "error: registry" in result.stderr and "no current version" in result.stderr


def test_format_metrics_orders_useful_metrics_first():
    text = format_metrics({"zeta": 1, "log_loss": 0.1234567, "accuracy": 0.9, "note": "x"})
    assert text == "accuracy=0.9 log_loss=0.1235 zeta=1"
    assert format_metrics({}) == "-"


# ------------------------------------------------- both backends: local and gs://


@pytest.fixture(params=["local", "gcs"])
def root(request, tmp_path) -> str:
    """A registry root on the local disk or on the storage emulator (gs://)."""
    if request.param == "local":
        return str(tmp_path / "registry")
    return request.getfixturevalue("gcs_bucket") + "/models/registry"


def _objects(root: str, under: str) -> list[str]:
    """Every file (local) or object (gs://) below ``root/under``, relative to it."""
    if not root.startswith("gs://"):
        base = Path(root) / under
        return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())
    from google.cloud import storage

    bucket, _, prefix = root[len("gs://") :].partition("/")
    full = f"{prefix}/{under}/"
    return sorted(b.name[len(full) :] for b in storage.Client().list_blobs(bucket, prefix=full))


def test_gcs_registry_round_trip(gcs_bucket, keras_model, sample_batch):
    root = f"{gcs_bucket}/registry"
    registry = ModelRegistry(root)
    assert registry.remote and registry.versions() == [] and registry.current_version() is None
    a = registry.publish(keras_model, _meta())
    b = registry.publish(keras_model, _meta(metrics={"accuracy": 0.95}))
    assert [v.version for v in registry.versions()] == [a, b]
    assert registry.get(b).path == f"{root}/versions/{b}"
    assert registry.keras_path(a) == f"{root}/versions/{a}/model.keras"
    files = _objects(root, f"versions/{a}")
    assert {"model.keras", "metadata.json", COMPLETE_MARKER, "saved_model/saved_model.pb"} <= set(
        files
    )

    registry.promote(a, reason="first")
    registry.promote(b, reason="second")
    assert registry.current_pointer()["previous"] == a
    assert registry.rollback(reason="b is worse") == a
    assert registry.get(b).status == "rolled-back"
    assert [(e["action"], e["version"]) for e in registry.history()] == [
        ("promote", a),
        ("promote", b),
        ("rollback", a),
    ]
    expected = keras_model.predict(sample_batch, verbose=0)
    loaded = registry.load_keras(a)  # downloaded through google-cloud-storage
    np.testing.assert_array_equal(loaded.predict(sample_batch, verbose=0), expected)
    with registry.local_artifacts(a) as local:
        assert os.path.isfile(os.path.join(local, "saved_model", "saved_model.pb"))
    assert not os.path.exists(local)  # the download is removed afterwards


def test_gcs_storage_refuses_a_stale_generation(gcs_bucket):
    from model.storage import PreconditionFailed, open_store

    store = open_store(f"{gcs_bucket}/s")
    assert store.read_versioned("CURRENT") == (None, 0)
    store.write_if("CURRENT", b"one", 0)
    data, generation = store.read_versioned("CURRENT")
    assert data == b"one" and generation > 0
    with pytest.raises(PreconditionFailed):
        store.write_if("CURRENT", b"two", 0)  # "must not exist yet"
    store.write_if("CURRENT", b"two", generation)
    with pytest.raises(PreconditionFailed):
        store.write_if("CURRENT", b"three", generation)  # stale generation
    assert store.read("CURRENT") == b"two"
    store.create("marker", b"x")
    with pytest.raises(FileExistsError):
        store.create("marker", b"y")


def _gate_first_read(registry: ModelRegistry, after_read) -> None:
    """Makes ``registry``'s first read of CURRENT call ``after_read()`` once it has read."""
    store = registry._store
    real = store.read_versioned
    gated = [True]

    def read_versioned(key):
        result = real(key)
        if key == "CURRENT" and gated[0]:
            gated[0] = False
            after_read()
        return result

    store.read_versioned = read_versioned


def _in_threads(*calls):
    """Runs the callables on threads; returns their results or exceptions."""
    import threading

    results: list = [None] * len(calls)

    def run(i, fn):
        try:
            results[i] = fn()
        except Exception as e:  # noqa: BLE001 - returned to the test
            results[i] = e

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a writer hung"
    return results


def test_two_promotions_racing_lose_no_update(root, keras_model):
    import threading

    setup = ModelRegistry(root)
    v1, v2, v3 = (setup.publish(keras_model, _meta()) for _ in range(3))
    setup.promote(v1)
    both_read = threading.Barrier(2, timeout=60)
    writers = [ModelRegistry(root), ModelRegistry(root)]  # two independent clients
    for writer in writers:
        _gate_first_read(writer, both_read.wait)  # both decide on CURRENT == v1

    results = _in_threads(lambda: writers[0].promote(v2), lambda: writers[1].promote(v3))
    assert results == [None, None]
    events = setup.history()
    assert [e["action"] for e in events] == ["promote"] * 3
    # A chain: each swap names the one before it as previous; none was overwritten.
    assert events[0]["version"] == v1
    assert {events[1]["version"], events[2]["version"]} == {v2, v3}
    assert events[1]["previous"] == v1
    assert events[2]["previous"] == events[1]["version"]
    assert [e["sequence"] for e in events] == [1, 2, 3]
    pointer = setup.current_pointer()
    assert (pointer["version"], pointer["previous"]) == (events[2]["version"], events[1]["version"])


def test_a_rollback_judged_on_v2_never_moves_a_v3_promoted_meanwhile(root, keras_model):
    import threading

    from model.registry import CurrentChanged

    setup = ModelRegistry(root)
    v1, v2, v3 = (setup.publish(keras_model, _meta()) for _ in range(3))
    setup.promote(v1)
    setup.promote(v2)
    both_read = threading.Barrier(2, timeout=60)
    promoted = threading.Event()
    monitor, trainer = ModelRegistry(root), ModelRegistry(root)

    def monitor_waits_for_the_promotion():
        both_read.wait()
        assert promoted.wait(timeout=60)

    _gate_first_read(monitor, monitor_waits_for_the_promotion)
    _gate_first_read(trainer, both_read.wait)

    def promote_v3():
        trainer.promote(v3, reason="trainer")
        promoted.set()

    results = _in_threads(
        lambda: monitor.rollback(to_version=v1, reason="v2 is worse", if_current=v2), promote_v3
    )
    assert isinstance(results[0], CurrentChanged), results
    assert f"CURRENT is {v3}" in str(results[0])
    assert results[1] is None
    assert setup.current_version() == v3
    assert setup.get(v3).status == "promoted"
    assert setup.get(v2).status == "promoted"  # not marked rolled-back either
    assert [e["version"] for e in setup.history()] == [v1, v2, v3]


def test_if_current_pins_the_state_a_decision_was_based_on(root, keras_model):
    from model.registry import CurrentChanged

    registry = ModelRegistry(root)
    v1, v2 = (registry.publish(keras_model, _meta()) for _ in range(2))
    with pytest.raises(CurrentChanged, match="CURRENT is empty"):
        registry.promote(v1, if_current=v2)
    registry.promote(v1, if_current=None)  # None: nothing current yet
    with pytest.raises(CurrentChanged):
        registry.promote(v2, if_current=None)
    registry.promote(v2, if_current=v1)
    with pytest.raises(CurrentChanged, match=f"CURRENT is {v2}"):
        registry.rollback(if_current=v1)
    assert registry.current_version() == v2 and len(registry.history()) == 2
    assert registry.rollback(if_current=v2) == v1


def test_an_injected_failure_between_file_writes_publishes_nothing(root, keras_model, monkeypatch):
    from model import storage as storage_module

    registry = ModelRegistry(root)
    good = registry.publish(keras_model, _meta())
    writes = [0]

    def fail_on_the_third(real):
        def write(*args, **kwargs):
            writes[0] += 1
            if writes[0] == 3:
                raise OSError("simulated outage")
            return real(*args, **kwargs)

        return write

    if registry.remote:
        from google.cloud.storage import Blob

        monkeypatch.setattr(
            Blob, "upload_from_filename", fail_on_the_third(Blob.upload_from_filename)
        )
    else:
        real_copytree = storage_module.shutil.copytree
        failing_copy = fail_on_the_third(shutil.copy2)

        def copytree(src, dst, *args, **kwargs):
            if args:  # copytree's own recursion passes copy_function positionally
                return real_copytree(src, dst, *args, **kwargs)
            return real_copytree(src, dst, copy_function=failing_copy)

        monkeypatch.setattr(storage_module.shutil, "copytree", copytree)
    with pytest.raises(OSError, match="simulated outage"):
        registry.publish(keras_model, _meta())
    assert writes[0] >= 3  # (copytree goes on copying, then raises)
    assert [v.version for v in registry.versions()] == [good]
    assert registry._version_dir_names() == [good]
    assert [n for n in _objects(root, "versions") if not n.startswith(good)] == []


_PUBLISH_AND_HANG = """
import os, sys, time
from dataset.config import load_config
from model.keras_model import build_model
from model.registry import ModelRegistry

registry, ready = ModelRegistry(sys.argv[1]), sys.argv[2]

def hang():
    open(ready, "w").close()
    time.sleep(600)

if registry.remote:  # killed between two object uploads
    from google.cloud.storage import Blob
    real, uploads = Blob.upload_from_filename, []
    def upload(self, *args, **kwargs):
        real(self, *args, **kwargs)
        uploads.append(self.name)
        if len(uploads) == 2:
            hang()
    Blob.upload_from_filename = upload
else:  # killed after the files are in place, before the _COMPLETE marker
    real_create = registry._store.create
    def create(key, data):
        if key.endswith("_COMPLETE"):
            hang()
        return real_create(key, data)
    registry._store.create = create
registry.publish(build_model(load_config("configs/traffic.yaml"), seed=1), {"note": "killed"})
"""


def test_a_publisher_killed_mid_publish_leaves_nothing_visible_or_served(
    root, keras_model, tmp_path
):
    import signal
    import time

    registry = ModelRegistry(root)
    good = registry.publish(keras_model, _meta())
    registry.promote(good)
    ready = tmp_path / "half-written"
    proc = subprocess.Popen(
        [sys.executable, "-c", _PUBLISH_AND_HANG, root, str(ready)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 180
        while not ready.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the publisher never reached the kill point"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stderr.close()

    names = registry._version_dir_names()
    assert len(names) == 2  # the half-written version is there ...
    (partial,) = set(names) - {good}
    assert _objects(root, f"versions/{partial}")  # ... with some of its files
    assert [v.version for v in registry.versions()] == [good]  # ... but invisible
    with pytest.raises(ValueError, match="incomplete"):
        registry.get(partial)
    with pytest.raises(ValueError, match="incomplete"):
        registry.promote(partial)
    assert registry.current_version() == good  # and never served
    assert registry.load_keras(good) is not None


_PROMOTE_IN_TURN = """
import os, sys, time
from model.registry import ModelRegistry

registry = ModelRegistry(sys.argv[1])
go, versions = sys.argv[3], sys.argv[4:]
open(go + "." + versions[0], "w").close()  # ready
deadline = time.monotonic() + 120
while not os.path.exists(go) and time.monotonic() < deadline:  # start together
    time.sleep(0.01)
for i in range(int(sys.argv[2])):
    registry.promote(versions[i % len(versions)], reason="process " + versions[0][-6:])
"""


def test_two_writer_processes_keep_one_unbroken_chain(root, keras_model, tmp_path):
    setup = ModelRegistry(root)
    va, vb, vc, vd = (setup.publish(keras_model, _meta()) for _ in range(4))
    rounds, go = 40, tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PROMOTE_IN_TURN, root, str(rounds), str(go), *pair],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stderr=subprocess.PIPE,
        )
        for pair in ((va, vb), (vc, vd))
    ]
    deadline = time.monotonic() + 120
    while not all(Path(f"{go}.{v}").exists() for v in (va, vc)):
        assert time.monotonic() < deadline, "writer processes did not start"
        time.sleep(0.05)
    go.touch()  # both are ready: they start promoting together
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-3000:]
    events = setup.history()
    assert len(events) >= rounds  # a promotion of the current version is a no-op
    assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
    for before, after in zip(events, events[1:], strict=False):
        assert after["previous"] == before["version"], (before, after)  # no lost update
    assert setup.current_pointer()["sequence"] == len(events)
