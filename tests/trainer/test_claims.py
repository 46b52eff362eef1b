"""Tests of run ownership (trainer/claims.py): one trainer per run id."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from trainer import claims

RACER = """
import sys
from trainer import claims
try:
    claims.claim(sys.argv[1], "run-x", sys.argv[2])
except claims.RunOwnedElsewhere:
    sys.exit(claims.REFUSED_EXIT_CODE)
"""


def test_a_run_is_claimed_once(tmp_path):
    root = str(tmp_path / "registry")
    assert claims.read(root, "run-x") is None
    mine = claims.claim(root, "run-x", "attempt-1", backend="local")
    assert claims.read(root, "run-x") == mine
    assert mine["attempt_id"] == "attempt-1" and mine["backend"] == "local" and mine["pid"]
    with pytest.raises(claims.RunOwnedElsewhere, match="attempt_id attempt-1") as refused:
        claims.claim(root, "run-x", "attempt-2")
    assert refused.value.owner == mine
    with pytest.raises(claims.RunOwnedElsewhere):
        claims.claim(root, "run-x", "attempt-1")  # not even by the same submission twice


def test_release_only_by_the_owning_attempt(tmp_path):
    root = str(tmp_path)
    claims.claim(root, "run-x", "attempt-1")
    assert claims.release(root, "run-x", "attempt-2") is False
    assert claims.read(root, "run-x")["attempt_id"] == "attempt-1"
    assert claims.release(root, "run-x", "attempt-1") is True
    assert claims.read(root, "run-x") is None
    assert claims.release(root, "run-x", "attempt-1") is False
    claims.claim(root, "run-x", "attempt-3")  # free again


def test_many_trainers_racing_for_one_run_exactly_one_wins(tmp_path):
    root = str(tmp_path / "registry")
    racers = [
        subprocess.Popen([sys.executable, "-c", RACER, root, f"attempt-{i}"]) for i in range(8)
    ]
    codes = [p.wait(60) for p in racers]
    assert sorted(codes) == [0] + [claims.REFUSED_EXIT_CODE] * 7
    winner = codes.index(0)
    assert claims.read(root, "run-x")["attempt_id"] == f"attempt-{winner}"


def test_a_claim_being_written_counts_as_taken(tmp_path):
    path = tmp_path / "claims" / "run-x.json"
    path.parent.mkdir()
    path.write_text("")  # created, not yet written
    assert claims.read(str(tmp_path), "run-x") == {}
    with pytest.raises(claims.RunOwnedElsewhere, match="being written"):
        claims.claim(str(tmp_path), "run-x", "a")


def test_claim_paths(tmp_path):
    assert claims.claim_path("gs://b/reg/", "run-1") == "gs://b/reg/claims/run-1.json"
    assert claims.claim_path(str(tmp_path), "run-1") == str(tmp_path / "claims" / "run-1.json")
    for bad in ("", "../x", "a/b", ".hidden"):
        with pytest.raises(ValueError):
            claims.claim_path(str(tmp_path), bad)


class _Blob:
    """google-cloud-storage's Blob, as far as claims use it, with GCS's generation rules."""

    def __init__(self, objects, name):
        self.objects, self.name, self.generation = objects, name, None

    def upload_from_string(self, text, content_type=None, if_generation_match=None):
        from google.api_core import exceptions as gexc

        current = self.objects.get(self.name, (None, 0))[1]
        if if_generation_match is not None and if_generation_match != current:
            raise gexc.PreconditionFailed("generation mismatch")
        self.objects[self.name] = (text, current + 1)

    def download_as_text(self, if_generation_match=None):
        from google.api_core import exceptions as gexc

        if self.name not in self.objects:
            raise gexc.NotFound(self.name)
        return self.objects[self.name][0]

    def reload(self):
        from google.api_core import exceptions as gexc

        if self.name not in self.objects:
            raise gexc.NotFound(self.name)
        self.generation = self.objects[self.name][1]

    def delete(self, if_generation_match=None):
        from google.api_core import exceptions as gexc

        if self.objects.get(self.name, (None, None))[1] != if_generation_match:
            raise gexc.PreconditionFailed("generation mismatch")
        del self.objects[self.name]


class _Storage:
    def __init__(self):
        self.objects = {}

    def bucket(self, name):
        storage = self

        class _Bucket:
            def blob(self, blob_name):
                return _Blob(storage.objects, f"{name}/{blob_name}")

        return _Bucket()


def test_gcs_claims_use_the_no_live_object_precondition():
    storage = _Storage()
    root = "gs://bucket/registry"
    claims.claim(root, "run-x", "a1", storage_client=storage)
    assert json.loads(storage.objects["bucket/registry/claims/run-x.json"][0])["attempt_id"] == "a1"
    with pytest.raises(claims.RunOwnedElsewhere, match="a1"):
        claims.claim(root, "run-x", "a2", storage_client=storage)
    assert claims.release(root, "run-x", "a2", storage_client=storage) is False
    assert claims.release(root, "run-x", "a1", storage_client=storage) is True
    assert claims.read(root, "run-x", storage_client=storage) is None


def test_the_trainer_refuses_a_run_another_trainer_owns(tmp_path, capsys):
    from trainer.task import main

    registry = str(tmp_path / "registry")
    claims.claim(registry, "run-x", "attempt-1")
    args = ["--config", "configs/traffic.yaml", "--project", "local-project", "--bq_dataset"]
    args += ["d", "--registry", registry, "--run-id", "run-x", "--trigger-id", "x"]
    # client=object(): the refusal happens before any BigQuery call (nothing recorded).
    assert main([*args, "--attempt-id", "attempt-2"], client=object()) == claims.REFUSED_EXIT_CODE
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["status"] == "refused" and "attempt-1" in last["error"]
