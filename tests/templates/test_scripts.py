"""templates/build.sh and run.sh --print-only: the exact gcloud/docker commands."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGE = "europe-west4-docker.pkg.dev/demo-project/streaming-ct/streaming-ct:v7"
TEMPLATE = "gs://demo-bucket/templates/streaming-ct-v7.json"
COMMON = ["--project", "demo-project", "--bucket", "demo-bucket", "--region", "europe-west4"]
COMMON += ["--tag", "v7", "--print-only"]
# The scripts read their settings from the environment: run them without the caller's.
CLEAN_ENV = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}


def printed(script: str, *args: str) -> list[list[str]]:
    """The commands a script prints with --print-only, each split into argv."""
    done = subprocess.run(
        [str(REPO / "templates" / script), *args, *COMMON],
        capture_output=True,
        text=True,
        env=CLEAN_ENV,
        timeout=60,
        check=True,
    )
    assert done.stderr == ""  # prints only: nothing ran
    return [shlex.split(line) for line in done.stdout.splitlines()]


def flag(argv: list[str], name: str) -> str:
    """The value of ``--name value`` or ``--name=value`` (exactly one occurrence)."""
    values = [argv[i + 1] for i, a in enumerate(argv) if a == name]
    values += [a.split("=", 1)[1] for a in argv if a.startswith(name + "=")]
    assert len(values) == 1, (name, argv)
    return values[0]


def parameters(argv: list[str]) -> dict[str, str]:
    pairs = [argv[i + 1] for i, a in enumerate(argv) if a == "--parameters"]
    return dict(p.split("=", 1) for p in pairs)


def test_build_pushes_the_image_and_writes_the_template():
    build, template = printed("build.sh")
    assert build[:4] == ["gcloud", "builds", "submit", "."]
    assert flag(build, "--config") == "templates/cloudbuild.yaml"
    assert flag(build, "--substitutions") == f"_IMAGE={IMAGE}"
    assert template[:5] == ["gcloud", "dataflow", "flex-template", "build", TEMPLATE]
    assert flag(template, "--image") == IMAGE
    assert flag(template, "--sdk-language") == "PYTHON"
    assert flag(template, "--metadata-file") == "templates/metadata.json"
    assert flag(template, "--project") == "demo-project"


def test_build_with_docker():
    build, push = printed("build.sh", "image", "--builder", "docker")
    assert build == ["docker", "build", "-f", "templates/Dockerfile", "-t", IMAGE, "."]
    assert push == ["docker", "push", IMAGE]


def test_launch_passes_every_parameter_and_the_worker_image():
    (run,) = printed("run.sh", "launch", "--param", "inference_max_batch_size=128")
    assert run[:5] == ["gcloud", "dataflow", "flex-template", "run", "streaming-ct-traffic"]
    assert flag(run, "--template-file-gcs-location") == TEMPLATE
    assert flag(run, "--region") == "europe-west4"
    assert flag(run, "--project") == "demo-project"
    assert "--update" not in run
    assert "--enable-streaming-engine" in run
    assert flag(run, "--service-account-email").startswith("ct-dataflow-worker@demo-project.")
    assert parameters(run) == {
        "dataset_config": "gs://demo-bucket/configs/traffic.yaml",
        "input_subscription": "projects/demo-project/subscriptions/traffic-pipeline",
        "bq_dataset": "traffic",
        "model_registry": "gs://demo-bucket/registry/traffic",
        "retrain_topic": "projects/demo-project/topics/traffic-retrain",
        "sdk_container_image": IMAGE,
        "inference_max_batch_size": "128",
    }


def test_launch_parameters_are_template_parameters_or_beam_options():
    from apache_beam.options.pipeline_options import WorkerOptions

    (run,) = printed("run.sh", "launch")
    metadata = json.loads((REPO / "templates" / "metadata.json").read_text())
    names = {p["name"] for p in metadata["parameters"]}
    required = {p["name"] for p in metadata["parameters"] if not p.get("isOptional")}
    parser = argparse.ArgumentParser()
    WorkerOptions._add_argparse_args(parser)
    beam_options = {a.dest for a in parser._actions}
    given = set(parameters(run))
    assert required <= given
    assert given - names <= beam_options, given - names
    assert "sdk_container_image" in beam_options


def test_update_replaces_the_job_in_place_with_name_mappings():
    (run,) = printed(
        "run.sh",
        "update",
        "--mapping",
        "WriteAggregates=WriteWindowAggregates",
        "--mapping",
        "Old=",
    )
    (launch,) = printed("run.sh", "launch")
    assert "--update" in run
    assert flag(run, "--transform-name-mappings") == "WriteAggregates=WriteWindowAggregates,Old="
    assert run[4] == launch[4] == "streaming-ct-traffic"  # the running job's name
    assert parameters(run) == parameters(launch)


@pytest.mark.parametrize("verb", ["drain", "cancel"])
def test_drain_and_cancel(verb):
    (stop,) = printed("run.sh", verb, "--job-id", "2026-11-26_01_02_03-123")
    assert stop == ["gcloud", "dataflow", "jobs", verb, "2026-11-26_01_02_03-123"] + [
        "--project",
        "demo-project",
        "--region",
        "europe-west4",
    ]
    lookup, by_name = printed("run.sh", verb)
    assert " ".join(lookup).startswith("JOB_ID=$(gcloud dataflow jobs list")
    assert "--filter name=streaming-ct-traffic" in " ".join(lookup)
    assert by_name[:5] == ["gcloud", "dataflow", "jobs", verb, "$JOB_ID"]


def test_launcher_runs_on_cloud_run_from_the_same_image():
    from trainer.launcher import _build_parser

    deploy, invoker, schedule, execute = printed("run.sh", "launcher")
    assert deploy[:5] == ["gcloud", "run", "jobs", "deploy", "ct-launcher-traffic"]
    assert flag(deploy, "--image") == IMAGE
    assert flag(deploy, "--command") == "python"
    argv = flag(deploy, "--args").split(",")
    assert argv[:2] == ["-m", "trainer.launcher"]
    args = _build_parser().parse_args(argv[2:])  # the launcher accepts its command line
    assert args.subscription == "projects/demo-project/subscriptions/traffic-retrain-launcher"
    assert args.backend == "vertex" and args.vertex_container_uri == IMAGE
    assert args.config == "gs://demo-bucket/configs/traffic.yaml"
    assert args.registry == "gs://demo-bucket/registry/traffic"
    assert args.state_dir.startswith("/state/")  # on the bucket volume: survives restarts
    assert flag(deploy, "--add-volume-mount") == "volume=state,mount-path=/state"
    assert args.duration < int(flag(deploy, "--task-timeout").rstrip("s"))
    assert invoker[:5] == ["gcloud", "run", "jobs", "add-iam-policy-binding", "ct-launcher-traffic"]
    assert flag(invoker, "--role") == "roles/run.invoker"
    assert flag(invoker, "--member") == "serviceAccount:" + flag(deploy, "--service-account")
    assert flag(schedule, "--oauth-service-account-email") == flag(deploy, "--service-account")
    assert schedule[:5] == ["gcloud", "scheduler", "jobs", "create", "http"]
    assert flag(schedule, "--uri").endswith("/jobs/ct-launcher-traffic:run")
    assert execute == ["gcloud", "run", "jobs", "execute", "ct-launcher-traffic"] + [
        "--project",
        "demo-project",
        "--region",
        "europe-west4",
    ]


def test_graph_prints_the_documented_dry_run_command():
    from tests.pipelines.test_dataflow_graph import ARGS

    (graph,) = printed("run.sh", "graph")
    assert graph[1:3] == ["-m", "pipelines.main"]
    assert graph[3:] == ARGS


def test_missing_settings_fail_with_the_flag_named():
    done = subprocess.run(
        [str(REPO / "templates" / "run.sh"), "launch", "--print-only", "--bucket", "b"],
        capture_output=True,
        text=True,
        env=CLEAN_ENV,
        timeout=60,
    )
    assert done.returncode != 0
    assert "--project" in done.stderr
