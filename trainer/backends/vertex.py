"""The Vertex AI backend: the trainer as a CustomJob (prebuilt container + this repo's sdist).

``vertex_job_spec`` is pure (tested exactly); ``VertexBackend.submit`` is the one
network call. ``stage_package`` builds and uploads the sdist the job installs.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainer.backends.base import TRAINER_MODULE, Backend, JobArgs, JobState
from trainer.trigger_messages import Run

logger = logging.getLogger(__name__)

DEFAULT_VERTEX_POLL_SECONDS = 30.0
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class VertexSettings:
    """Where and how Vertex AI runs the trainer.

    Attributes:
        project / region: where the CustomJob runs.
        staging_bucket: ``gs://bucket[/path]`` for job outputs (and staged files).
        container_uri: the prebuilt training container (``executor_image_uri``).
        package_uris: the sdist(s) of this repo on Cloud Storage (``stage_package``).
        job: the trainer's arguments as the job sees them: ``job.config_path`` is
            the config's ``gs://`` URI, ``job.registry`` a ``gs://`` registry.
        machine_type / service_account: the worker's machine and identity.
    """

    project: str
    region: str
    staging_bucket: str
    container_uri: str
    package_uris: tuple[str, ...]
    job: JobArgs
    machine_type: str = "n1-standard-4"
    service_account: str | None = None


def _label_value(value: str) -> str:
    """A Vertex label value: lowercase letters, digits, ``_`` and ``-``, <= 63 chars."""
    return re.sub(r"[^a-z0-9_-]", "-", value.lower())[:63]


def vertex_job_spec(
    run: Run, settings: VertexSettings, attempt_id: str | None = None
) -> dict[str, Any]:
    """The CustomJob for ``run`` (pure): the keyword arguments of ``aiplatform.CustomJob``.

    One worker pool, one replica of ``settings.machine_type``, running
    ``python -m trainer.task`` from the staged sdist on the prebuilt container
    ``settings.container_uri`` with the same arguments as the local backend
    (``settings.job``, with ``--backend vertex``).
    Outputs go under ``<staging_bucket>/runs/<run_id>``.
    """
    bucket = settings.staging_bucket.rstrip("/")
    return {
        "display_name": f"train-{run.dataset}-{run.run_id}"[:128],
        "worker_pool_specs": [
            {
                "machine_spec": {"machine_type": settings.machine_type},
                "replica_count": 1,
                "python_package_spec": {
                    "executor_image_uri": settings.container_uri,
                    "package_uris": list(settings.package_uris),
                    "python_module": TRAINER_MODULE,
                    "args": settings.job.trainer_args(run, "vertex", attempt_id),
                },
            }
        ],
        "base_output_dir": f"{bucket}/runs/{run.run_id}",
        "staging_bucket": bucket,
        "labels": {
            "app": "continuous-training",
            "dataset": _label_value(run.dataset),
            "run_id": _label_value(run.run_id),
        },
    }


def build_custom_job(spec: Mapping[str, Any], settings: VertexSettings, credentials=None):
    """An ``aiplatform.CustomJob`` built from ``spec`` (no network call)."""
    from google.cloud import aiplatform

    return aiplatform.CustomJob(
        display_name=spec["display_name"],
        worker_pool_specs=spec["worker_pool_specs"],
        base_output_dir=spec["base_output_dir"],
        staging_bucket=spec["staging_bucket"],
        labels=dict(spec["labels"]),
        project=settings.project,
        location=settings.region,
        credentials=credentials,
    )


@dataclasses.dataclass
class VertexHandle:
    run_id: str
    resource_name: str


_VERTEX_FAILED = ("JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED")


class VertexBackend(Backend):
    """Runs the trainer as a Vertex AI CustomJob (prebuilt container + this repo's sdist)."""

    name = "vertex"
    keeps_running_on_shutdown = True

    def __init__(
        self,
        settings: VertexSettings,
        credentials=None,
        poll_interval_seconds: float = DEFAULT_VERTEX_POLL_SECONDS,
    ):
        self.settings = settings
        self.job_args = settings.job
        self.credentials = credentials
        self.poll_interval_seconds = poll_interval_seconds

    def build_job(self, run: Run, attempt_id: str | None = None):
        return build_custom_job(
            vertex_job_spec(run, self.settings, attempt_id), self.settings, self.credentials
        )

    def submit(self, run: Run, attempt_id: str | None = None) -> VertexHandle:
        job = self.build_job(run, attempt_id)
        job.submit(service_account=self.settings.service_account)  # the network call
        logger.info("submitted Vertex AI CustomJob %s for %s", job.resource_name, run.run_id)
        return VertexHandle(run.run_id, job.resource_name)

    def poll(self, handle: VertexHandle) -> JobState:
        from google.cloud import aiplatform

        try:
            job = aiplatform.CustomJob.get(
                handle.resource_name,
                project=self.settings.project,
                location=self.settings.region,
                credentials=self.credentials,
            )
        except Exception as e:  # transient API trouble: ask again later
            logger.warning("cannot read %s: %s", handle.resource_name, e)
            return JobState("running")
        state = getattr(job.state, "name", str(job.state))
        if state == "JOB_STATE_SUCCEEDED":
            return JobState("exited")
        if state in _VERTEX_FAILED:
            error = getattr(job._gca_resource, "error", None)
            message = getattr(error, "message", "") if error is not None else ""
            return JobState("failed", f"Vertex job {handle.resource_name} {state}: {message}")
        return JobState("running")

    def describe(self, handle: VertexHandle) -> dict[str, Any]:
        return {"kind": "vertex", "resource_name": handle.resource_name}

    def reattach(self, record: Mapping[str, Any]) -> VertexHandle:
        # Whether it still runs is for poll() to find out.
        return VertexHandle(str(record["run_id"]), str(record["resource_name"]))


def _sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_sdist(out_dir: str | os.PathLike, source_dir: str | os.PathLike = REPO_ROOT) -> Path:
    """Builds this repo's source distribution into ``out_dir``; returns the file."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "setup.py",
            "-q",
            "egg_info",
            "--egg-base",
            str(out_dir),  # leave the source tree's egg-info alone
            "sdist",
            "--formats=gztar",
            "--dist-dir",
            str(out_dir),
        ],
        cwd=source_dir,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    built = sorted(out_dir.glob("*.tar.gz"), key=lambda p: p.stat().st_mtime)
    if not built:
        raise RuntimeError(f"setup.py sdist produced nothing in {out_dir}")
    return built[-1]


def staged_uri(staging_bucket: str, folder: str, local_path: str | os.PathLike) -> str:
    """``<bucket>/<folder>/<stem>-<sha256[:12]><suffix>``: content-addressed, so reruns reuse it."""
    path = Path(local_path)
    name = path.name
    suffix = ".tar.gz" if name.endswith(".tar.gz") else path.suffix
    stem = name[: -len(suffix)] if suffix else name
    return f"{staging_bucket.rstrip('/')}/{folder}/{stem}-{_sha256(path)[:12]}{suffix}"


def upload_to_gcs(local_path: str | os.PathLike, uri: str, storage_client=None) -> str:
    """Uploads a file to ``gs://bucket/name`` unless an object is already there."""
    if not uri.startswith("gs://"):
        raise ValueError(f"not a gs:// URI: {uri}")
    if storage_client is None:
        from google.cloud import storage

        storage_client = storage.Client()
    bucket_name, _, blob_name = uri[len("gs://") :].partition("/")
    blob = storage_client.bucket(bucket_name).blob(blob_name)
    if not blob.exists():
        blob.upload_from_filename(str(local_path))
        logger.info("uploaded %s to %s", local_path, uri)
    return uri


def stage_package(staging_bucket: str, storage_client=None) -> str:
    """Builds the sdist of this repo and uploads it to ``<bucket>/packages/``; returns its URI."""
    with tempfile.TemporaryDirectory(prefix="launcher-sdist-") as tmp:
        sdist = build_sdist(tmp)
        return upload_to_gcs(sdist, staged_uri(staging_bucket, "packages", sdist), storage_client)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--vertex-*`` options of ``python -m trainer.launcher``."""
    v = parser.add_argument_group("vertex backend")
    v.add_argument("--vertex-region")
    v.add_argument("--vertex-staging-bucket", help="gs://bucket[/path]")
    v.add_argument("--vertex-container-uri", help="prebuilt training container (Python 3.11)")
    v.add_argument("--vertex-machine-type", default="n1-standard-4")
    v.add_argument("--vertex-service-account")
    v.add_argument(
        "--vertex-package-uri",
        action="append",
        default=[],
        help="staged sdist(s); default: build and upload this repo's",
    )
    v.add_argument("--vertex-config-uri", help="config as the job opens it; default: staged")
    v.add_argument("--vertex-poll-seconds", type=float, default=DEFAULT_VERTEX_POLL_SECONDS)


def backend_from_args(args: argparse.Namespace, job_args: JobArgs) -> VertexBackend:
    """The Vertex backend for ``python -m trainer.launcher --backend vertex`` arguments.

    Stages the sdist and the config unless their ``gs://`` URIs are given.

    Raises:
        ValueError: for a missing or non-``gs://`` setting.
    """
    missing = [
        flag
        for flag, value in (
            ("--vertex-region", args.vertex_region),
            ("--vertex-staging-bucket", args.vertex_staging_bucket),
            ("--vertex-container-uri", args.vertex_container_uri),
        )
        if not value
    ]
    if missing:
        raise ValueError(f"--backend vertex needs {', '.join(missing)}")
    if not args.vertex_staging_bucket.startswith("gs://"):
        raise ValueError("--vertex-staging-bucket must be gs://...")
    if not args.registry.startswith("gs://"):
        raise ValueError(
            "--backend vertex needs a gs:// --registry (the job cannot see local disk)"
        )
    packages = tuple(args.vertex_package_uri) or (stage_package(args.vertex_staging_bucket),)
    config_uri = args.vertex_config_uri or upload_to_gcs(
        args.config, staged_uri(args.vertex_staging_bucket, "configs", args.config)
    )
    settings = VertexSettings(
        project=args.project,
        region=args.vertex_region,
        staging_bucket=args.vertex_staging_bucket,
        container_uri=args.vertex_container_uri,
        package_uris=packages,
        job=dataclasses.replace(job_args, config_path=config_uri),
        machine_type=args.vertex_machine_type,
        service_account=args.vertex_service_account,
    )
    return VertexBackend(settings, poll_interval_seconds=args.vertex_poll_seconds)
