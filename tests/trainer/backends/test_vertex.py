"""Tests of the Vertex AI backend (trainer/backends/vertex.py): the CustomJob spec
exactly, the job built from it, submit/poll with the network call replaced, staging
and the launcher's --vertex-* options."""

from __future__ import annotations

import dataclasses
import json
import sys
from types import SimpleNamespace

from tests.trainer.control_helpers import CONFIG_PATH
from trainer import launcher
from trainer.backends import vertex as V
from trainer.backends.base import JobArgs, JobState
from trainer.backends.local import LocalProcessBackend
from trainer.trigger_messages import Run

JOB = JobArgs(
    config_path="gs://bucket/staging/configs/traffic-0123456789ab.yaml",
    project="my-project",
    bq_dataset="traffic_prod",
    registry="gs://bucket/registry",
)
SETTINGS = V.VertexSettings(
    project="my-project",
    region="europe-west4",
    staging_bucket="gs://bucket/staging",
    container_uri="europe-docker.pkg.dev/vertex-ai/training/tf-cpu.2-17.py310:latest",
    package_uris=("gs://bucket/staging/packages/streaming-continuous-training-0.1.0-abc.tar.gz",),
    job=JOB,
    machine_type="n1-standard-4",
    service_account="trainer@my-project.iam.gserviceaccount.com",
)
RUN = Run("run-traffic-000042", "traffic-000042", "traffic", "quality")
EXPECTED_ARGS = [
    "--config",
    "gs://bucket/staging/configs/traffic-0123456789ab.yaml",
    "--project",
    "my-project",
    "--bq_dataset",
    "traffic_prod",
    "--registry",
    "gs://bucket/registry",
    "--run-id",
    "run-traffic-000042",
    "--trigger-id",
    "traffic-000042",
    "--backend",
    "vertex",
]


def test_vertex_job_spec_exact():
    assert V.vertex_job_spec(RUN, SETTINGS) == {
        "display_name": "train-traffic-run-traffic-000042",
        "worker_pool_specs": [
            {
                "machine_spec": {"machine_type": "n1-standard-4"},
                "replica_count": 1,
                "python_package_spec": {
                    "executor_image_uri": (
                        "europe-docker.pkg.dev/vertex-ai/training/tf-cpu.2-17.py310:latest"
                    ),
                    "package_uris": [
                        "gs://bucket/staging/packages/"
                        "streaming-continuous-training-0.1.0-abc.tar.gz"
                    ],
                    "python_module": "trainer.task",
                    "args": EXPECTED_ARGS,
                },
            }
        ],
        "base_output_dir": "gs://bucket/staging/runs/run-traffic-000042",
        "staging_bucket": "gs://bucket/staging",
        "labels": {
            "app": "continuous-training",
            "dataset": "traffic",
            "run_id": "run-traffic-000042",
        },
    }


def test_local_and_vertex_pass_the_same_trainer_arguments(tmp_path):
    local = LocalProcessBackend(dataclasses.replace(JOB, config_path="c.yaml"), tmp_path)
    assert local.command(RUN)[:3] == [sys.executable, "-m", "trainer.task"]
    vertex_args = V.vertex_job_spec(RUN, SETTINGS)["worker_pool_specs"][0]["python_package_spec"]
    assert local.command(RUN)[3:] == ["--config", "c.yaml", *EXPECTED_ARGS[2:-1], "local"]
    assert vertex_args["args"][2:-1] == EXPECTED_ARGS[2:-1]


def _anonymous():
    from google.auth.credentials import AnonymousCredentials

    return AnonymousCredentials()


def test_custom_job_is_built_from_the_spec():
    from google.cloud import aiplatform
    from google.protobuf import json_format

    spec = V.vertex_job_spec(RUN, SETTINGS)
    job = V.build_custom_job(spec, SETTINGS, credentials=_anonymous())
    assert isinstance(job, aiplatform.CustomJob)
    resource = json_format.MessageToDict(job._gca_resource._pb, preserving_proto_field_name=True)
    expected_pools = json.loads(json.dumps(spec["worker_pool_specs"]))
    expected_pools[0]["replica_count"] = "1"  # int64 is a string in proto JSON
    assert resource == {
        "display_name": spec["display_name"],
        "job_spec": {
            "worker_pool_specs": expected_pools,
            "base_output_directory": {"output_uri_prefix": spec["base_output_dir"]},
        },
        "labels": spec["labels"],
    }
    assert job.project == "my-project" and job.location == "europe-west4"


def test_vertex_backend_submit_and_poll(monkeypatch):
    from google.cloud import aiplatform

    submitted = {}

    def fake_submit(self, **kwargs):  # the only network call, replaced
        submitted["job"] = self
        submitted["kwargs"] = kwargs
        self._gca_resource.name = "projects/1/locations/europe-west4/customJobs/42"

    monkeypatch.setattr(aiplatform.CustomJob, "submit", fake_submit)
    backend = V.VertexBackend(SETTINGS, credentials=_anonymous())
    handle = backend.submit(RUN)
    assert handle == V.VertexHandle(RUN.run_id, "projects/1/locations/europe-west4/customJobs/42")
    assert submitted["kwargs"] == {"service_account": SETTINGS.service_account}
    pool = submitted["job"].job_spec.worker_pool_specs[0]
    assert list(pool.python_package_spec.args) == EXPECTED_ARGS
    assert backend.describe(handle) == {"kind": "vertex", "resource_name": handle.resource_name}
    assert backend.reattach({"run_id": RUN.run_id, **backend.describe(handle)}) == handle

    states = iter(["JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED"])

    def fake_get(resource_name, project=None, location=None, credentials=None):
        assert resource_name == handle.resource_name and location == "europe-west4"
        return SimpleNamespace(
            state=SimpleNamespace(name=next(states)),
            _gca_resource=SimpleNamespace(error=SimpleNamespace(message="OOM")),
        )

    monkeypatch.setattr(aiplatform.CustomJob, "get", staticmethod(fake_get))
    assert backend.poll(handle) == JobState("running")
    assert backend.poll(handle) == JobState("exited")
    failed = backend.poll(handle)
    assert failed.state == "failed" and "OOM" in failed.detail


def test_staged_uri_is_content_addressed(tmp_path):
    a = tmp_path / "pkg-0.1.0.tar.gz"
    a.write_bytes(b"one")
    uri = V.staged_uri("gs://b/staging/", "packages", a)
    assert uri.startswith("gs://b/staging/packages/pkg-0.1.0-") and uri.endswith(".tar.gz")
    a.write_bytes(b"two")
    assert V.staged_uri("gs://b/staging", "packages", a) != uri
    cfg = tmp_path / "traffic.yaml"
    cfg.write_text("x")
    assert V.staged_uri("gs://b", "configs", cfg).endswith(".yaml")


def test_vertex_cli_settings_and_refusals(tmp_path):
    base = [
        "--project",
        "my-project",
        "--config",
        CONFIG_PATH,
        "--subscription",
        "projects/my-project/subscriptions/retrain",
        "--bq_dataset",
        "traffic_prod",
        "--backend",
        "vertex",
    ]
    vertex = [
        "--vertex-region",
        "europe-west4",
        "--vertex-staging-bucket",
        "gs://bucket/staging",
        "--vertex-container-uri",
        SETTINGS.container_uri,
        "--vertex-service-account",
        SETTINGS.service_account,
        "--vertex-package-uri",
        SETTINGS.package_uris[0],
        "--vertex-config-uri",
        JOB.config_path,
    ]
    args = launcher._build_parser().parse_args(
        [*base, "--registry", "gs://bucket/registry", *vertex]
    )
    job = JobArgs(args.config, "my-project", "traffic_prod", args.registry)
    backend = V.backend_from_args(args, job)  # URIs given: nothing is built or uploaded
    assert backend.settings == SETTINGS
    assert launcher.main([*base, "--registry", str(tmp_path), *vertex]) == 2  # local registry
    assert launcher.main([*base, "--registry", "gs://bucket/registry"]) == 2  # no vertex flags


def test_the_submission_id_reaches_the_trainer():
    args = V.vertex_job_spec(RUN, SETTINGS, "a1b2")["worker_pool_specs"][0]
    assert args["python_package_spec"]["args"] == [*EXPECTED_ARGS, "--attempt-id", "a1b2"]
