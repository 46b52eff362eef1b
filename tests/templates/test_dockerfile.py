"""templates/Dockerfile: a complete build context and the lock's Beam release.

Docker cannot run here, so these tests read the Dockerfile: every path it
copies exists and survives .dockerignore, the image installs the lock and
the package, and the Beam SDK boot entrypoint comes from the same Beam
release as the lock's apache-beam pin.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
from pathlib import Path

import pytest
import setuptools

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "templates" / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    lines, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        current += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            lines.append(current)
            current = ""
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


INSTRUCTIONS = instructions(DOCKERFILE.read_text())


def arg_defaults() -> dict[str, str]:
    out = {}
    for op, args in INSTRUCTIONS:
        if op == "ARG" and "=" in args:
            name, value = args.split("=", 1)
            out[name.strip()] = value.strip()
    return out


def expand(value: str) -> str:
    args = arg_defaults()
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], value)


def context_copies() -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY from the build context (not --from)."""
    out = []
    for op, args in INSTRUCTIONS:
        if op == "COPY" and not args.startswith("--from"):
            *sources, dest = shlex.split(args)
            out.append((sources, dest))
    return out


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore excludes ``path`` (last matching pattern wins; ``!`` re-includes)."""
    parts = path.split("/")
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        if pat.startswith("**/"):
            hit = any(fnmatch.fnmatch(seg, pat[3:]) for seg in parts)
        else:
            hit = any(fnmatch.fnmatch("/".join(parts[:i]), pat) for i in range(1, len(parts) + 1))
        if hit:
            excluded = not negate
    return excluded


def ignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def lock_version(name: str) -> str:
    for line in (REPO / "requirements.txt").read_text().splitlines():
        m = re.match(rf"^{re.escape(name)}(\[[^\]]*\])?==(\S+)$", line.strip())
        if m:
            return m.group(2)
    raise AssertionError(f"{name} is not pinned in requirements.txt")


def test_every_copied_path_exists_and_is_in_the_build_context():
    patterns = ignore_patterns()
    copies = context_copies()
    assert copies
    for sources, _ in copies:
        for source in sources:
            path = REPO / source
            assert path.exists(), f"COPY {source}: no such file or directory"
            assert not dockerignored(source, patterns), f"COPY {source}: excluded by .dockerignore"
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            shipped = [
                p
                for p in files
                if "__pycache__" not in p.parts
                and not dockerignored(str(p.relative_to(REPO)), patterns)
            ]
            assert shipped, f"COPY {source}: nothing left after .dockerignore"
            if path.is_dir():
                for p in files:
                    if p.suffix in (".py", ".yaml") and "__pycache__" not in p.parts:
                        assert not dockerignored(str(p.relative_to(REPO)), patterns), p


def test_dockerignore_keeps_dev_tooling_and_secrets_out():
    patterns = ignore_patterns()
    for path in (".venv/bin/python", ".local/registry/CURRENT", ".git/HEAD", "local/emulators.py"):
        assert dockerignored(path, patterns), path
    assert dockerignored("dataset/__pycache__/config.cpython-311.pyc", patterns)


def test_the_image_has_every_package_setup_py_installs():
    copied = {s.rstrip("/") for sources, _ in context_copies() for s in sources}
    packages = {
        p.split(".")[0]
        for p in setuptools.find_packages(
            where=str(REPO),
            include=[
                "dataset*",
                "pipelines*",
                "transforms*",
                "model*",
                "trainer*",
                "simulator*",
                "dashboard*",
            ],
        )
    }
    setup_text = (REPO / "setup.py").read_text()
    for name in packages:
        assert f'"{name}*"' in setup_text
    assert packages <= copied
    assert "local" not in copied  # the emulator stack stays out of the image
    assert {"requirements.txt", "setup.py", "configs"} <= copied


def test_beam_sdk_entrypoint_matches_the_locked_beam_and_python():
    args = arg_defaults()
    assert args["BEAM_VERSION"] == lock_version("apache-beam")
    assert args["PYTHON_VERSION"] == "3.11"
    froms = [expand(a) for op, a in INSTRUCTIONS if op == "FROM"]
    assert "apache/beam_python3.11_sdk:" + lock_version("apache-beam") + " AS beam_sdk" in froms
    assert froms[-1] == "python:3.11-slim"
    assert "python311-template-launcher-base" in args["LAUNCHER_BASE"]
    assert ("COPY", "--from=beam_sdk /opt/apache/beam /opt/apache/beam") in INSTRUCTIONS
    assert ("ENTRYPOINT", '["/opt/apache/beam/boot"]') in INSTRUCTIONS


def test_the_image_installs_the_lock_then_the_package_and_checks_them():
    runs = [a for op, a in INSTRUCTIONS if op == "RUN"]
    assert any("pip install --no-cache-dir -r requirements.txt" in r for r in runs)
    assert any("pip install --no-cache-dir --no-deps -e ." in r and "pip check" in r for r in runs)
    assert runs.index(next(r for r in runs if "-r requirements.txt" in r)) < runs.index(
        next(r for r in runs if "pip check" in r)
    )


def test_flex_template_entry_point_is_copied_into_the_image():
    env = dict(
        a.split("=", 1) for op, a in INSTRUCTIONS if op == "ENV" and a.startswith("FLEX_TEMPLATE")
    )
    assert set(env) == {"FLEX_TEMPLATE_PYTHON_PY_FILE"}  # no requirements/setup file: no pip
    workdir = arg_defaults()["WORKDIR"]
    py_file = expand(env["FLEX_TEMPLATE_PYTHON_PY_FILE"].strip('"'))
    relative = py_file.removeprefix(workdir + "/")
    assert (REPO / relative).is_file()
    assert any(relative in sources for sources, _ in context_copies())


@pytest.mark.parametrize("path", ["templates/launch_pipeline.py"])
def test_launch_file_runs_pipelines_main(path):
    text = (REPO / path).read_text()
    assert "from pipelines.main import run" in text and "run()" in text
