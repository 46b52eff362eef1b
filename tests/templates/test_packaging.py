"""Packaging: loose ranges in setup.py, exact pins in one lock, nothing undeclared."""

from __future__ import annotations

import ast
import functools
import importlib.metadata as md
import re
import shutil
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("dataset", "pipelines", "transforms", "model", "trainer", "simulator", "dashboard")
# Imported for us by Beam's TensorFlow handler (apache_beam.ml.inference.tensorflow_inference).
INDIRECT = {"tensorflow-hub"}


def install_requires() -> list[Requirement]:
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            return [
                Requirement(ast.literal_eval(node.value)[i]) for i in range(len(node.value.elts))
            ]
    raise AssertionError("setup.py has no install_requires list")


def lock() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", f"requirements.txt is the lock, pin exactly: {line}"
        pins[canonicalize_name(req.name)] = spec.version
    return pins


@functools.cache
def _module_files() -> dict[str, str]:
    """Installed module path (``google/cloud/storage``) -> distribution name."""
    out: dict[str, str] = {}
    for dist in md.distributions():
        for f in dist.files or ():
            parts = Path(str(f)).with_suffix("").parts
            for depth in range(1, min(len(parts), 3) + 1):
                if len(parts) > depth and parts[depth] == "__init__" or len(parts) == depth:
                    out.setdefault(
                        "/".join(parts[:depth]), canonicalize_name(dist.metadata["Name"])
                    )
    return out


def distribution_of(module: str) -> str | None:
    parts = module.split(".")
    files = _module_files()
    for depth in range(len(parts), 0, -1):
        key = "/".join(parts[:depth])
        if key in files:
            return files[key]
    return None


def third_party_imports() -> dict[str, set[str]]:
    """module -> files, for every import in the shipped packages that is not ours or stdlib."""
    out: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    # ``from google.cloud import storage``: google.cloud.storage decides.
                    names = [f"{node.module}.{a.name}" for a in node.names]
                for name in names:
                    top = name.split(".")[0]
                    if top in PACKAGES or top in sys.stdlib_module_names or top == "__future__":
                        continue
                    out.setdefault(name, set()).add(str(path.relative_to(REPO)))
    return out


def test_install_requires_are_ranges_the_lock_satisfies():
    pins = lock()
    for req in install_requires():
        name = canonicalize_name(req.name)
        assert not any(s.operator in ("==", "===") for s in req.specifier), req
        assert name != "setuptools", "setuptools must not be shipped to workers"
        assert name in pins, f"{req.name} is not in the lock"
        assert req.specifier.contains(pins[name]), f"lock {name}=={pins[name]} outside {req}"


def test_every_import_is_declared():
    declared = {canonicalize_name(r.name) for r in install_requires()}
    assert INDIRECT <= declared
    missing = {}
    for module, files in third_party_imports().items():
        dist = distribution_of(module)
        assert dist is not None, f"{module} (imported by {sorted(files)}) is not installed"
        if dist not in declared:
            missing[module] = (dist, sorted(files))
    assert not missing, f"imported but not in setup.py install_requires: {missing}"


def test_one_place_for_exact_pins():
    dev = (REPO / "requirements-dev.txt").read_text()
    assert "-r requirements.txt" in dev.splitlines()
    dev_pins = {
        canonicalize_name(Requirement(ln).name)
        for ln in dev.splitlines()
        if ln.strip() and not ln.startswith(("#", "-"))
    }
    assert not dev_pins & set(lock()), "a runtime pin is repeated in requirements-dev.txt"
    pyproject = (REPO / "pyproject.toml").read_text()
    if re.search(r"^asyncio_", pyproject, re.M):
        assert "pytest-asyncio" in dev_pins, "pyproject sets pytest-asyncio options: pin it"
    assert "gcp-storage-emulator" in dev_pins


def test_venv_stamp_changes_with_every_dependency_file(tmp_path):
    for name in ("requirements.txt", "requirements-dev.txt", "setup.py", "pyproject.toml"):
        shutil.copy(REPO / name, tmp_path / name)
    (tmp_path / "local").mkdir()
    shutil.copy(REPO / "local" / "setup_env.sh", tmp_path / "local" / "setup_env.sh")

    def stamp() -> str:
        script = "source local/setup_env.sh && requirements_hash"
        done = subprocess.run(
            ["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    seen = {stamp()}
    for name in ("requirements.txt", "requirements-dev.txt", "setup.py", "pyproject.toml"):
        with open(tmp_path / name, "a") as f:
            f.write("\n# changed\n")
        seen.add(stamp())
    assert len(seen) == 5


def test_no_comment_points_outside_the_repository():
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    # README.md is edited by the lead (docs/pending/deploy.md says what to change).
    offenders = [
        name
        for name in tracked
        if name != "README.md"
        and name != "tests/templates/test_packaging.py"
        and (REPO / name).is_file()
        and "shared/NOTES.md" in (REPO / name).read_text(errors="ignore")
    ]
    assert offenders == []
