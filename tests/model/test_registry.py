"""Tests of the versioned model registry (model/registry.py) and its CLI (registry_cli)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
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
