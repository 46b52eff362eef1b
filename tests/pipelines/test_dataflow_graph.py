"""The Dataflow job graph, built offline (``--dry_run``): what Dataflow would run.

One test runs the documented command in a subprocess with sockets disabled
(nothing may be contacted, nothing created); the others inspect the
translated job in-process: streaming, the Pub/Sub source's dedup and event
time, every sink, and the step names ``--update`` matches against the running
job (``templates/step_names.json``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from apache_beam.internal import pickler
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2

from pipelines.main import dry_run_job, job_summary

REPO = Path(__file__).resolve().parents[2]
STEP_NAMES = REPO / "templates" / "step_names.json"
ARGS = [
    "--runner",
    "DataflowRunner",
    "--dry_run=True",
    "--no_auth",
    "--project",
    "demo-project",
    "--region",
    "us-central1",
    "--temp_location",
    "gs://demo-bucket/tmp",
    "--dataset_config",
    "configs/traffic.yaml",
    "--input_subscription",
    "projects/demo-project/subscriptions/traffic",
    "--bq_dataset",
    "traffic",
    "--model_registry",
    "gs://demo-bucket/registry",
    "--retrain_topic",
    "projects/demo-project/topics/traffic-retrain",
]
REGENERATE = "templates/run.sh step-names  # rewrites templates/step_names.json"

# Runs pipelines.main with every TCP/UDP connection refused and reported on stderr.
# tf.io.gfile reaches gs:// through TensorFlow's own C++ HTTP client, not Python
# sockets, so its functions are wrapped to report any remote path as well.
_OFFLINE = textwrap.dedent(
    """
    import functools, runpy, socket, sys
    _real_connect = socket.socket.connect
    def _refuse(self, address, *a, **k):
        if self.family == socket.AF_UNIX:
            return _real_connect(self, address, *a, **k)
        print(f"NETWORK ATTEMPT: {address}", file=sys.stderr, flush=True)
        raise OSError("network disabled by the test")
    socket.socket.connect = _refuse
    socket.socket.connect_ex = _refuse

    import tensorflow as tf
    def _local_only(name, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if any(isinstance(a, str) and "://" in a for a in args):
                print(f"NETWORK ATTEMPT: tf.io.gfile.{name}{args}", file=sys.stderr, flush=True)
                raise OSError("network disabled by the test")
            return fn(*args, **kwargs)
        return wrapper
    for _name in dir(tf.io.gfile):
        if not _name.startswith("_") and callable(getattr(tf.io.gfile, _name)):
            setattr(tf.io.gfile, _name, _local_only(_name, getattr(tf.io.gfile, _name)))

    sys.argv = ["pipelines.main", *sys.argv[1:]]
    runpy.run_module("pipelines.main", run_name="__main__")
    """
)


def run_offline(args: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    """``python -m pipelines.main ARGS`` with sockets disabled (see ``_OFFLINE``)."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_EMULATOR_HOST")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-c", _OFFLINE, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def job():
    return dry_run_job(PipelineOptions(ARGS))


@pytest.fixture(scope="module")
def transforms(job) -> dict[str, beam_runner_api_pb2.PTransform]:
    """unique name -> transform, from the portable pipeline (Runner v2 keeps steps there)."""
    return {t.unique_name: t for t in job.proto_pipeline.components.transforms.values()}


def _dofn(transform: beam_runner_api_pb2.PTransform):
    payload = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
    return pickler.loads(payload.do_fn.payload)[0]


def test_cli_prints_the_step_names_offline_and_creates_nothing(tmp_path):
    result = run_offline(ARGS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "NETWORK ATTEMPT" not in result.stderr
    lines = [ln for ln in result.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stdout
    summary = json.loads(lines[0])
    assert summary["streaming"] is True
    assert summary["steps"] == json.loads(STEP_NAMES.read_text())


def test_job_is_streaming_runner_v2(job):
    assert job.proto.type.name == "JOB_TYPE_STREAMING"
    assert not job.proto.steps  # Runner v2: the graph is the portable pipeline
    assert job_summary(job)["streaming"] is True


def test_pubsub_read_dedups_at_the_source_and_leaves_event_time_to_validation(transforms):
    reads = [t for t in transforms.values() if t.spec.urn == "beam:transform:pubsub_read:v1"]
    assert [t.unique_name for t in reads] == ["ReadEvents/ReadFromPubSub/Read"]
    payload = beam_runner_api_pb2.PubSubReadPayload.FromString(reads[0].spec.payload)
    assert payload.subscription == "projects/demo-project/subscriptions/traffic"
    assert payload.id_attribute == "message_id"  # id_label: Dataflow drops redeliveries
    # No timestamp_attribute: a bad event-time attribute would fail the read itself (a
    # poison message). ParseAndValidate checks the attribute and assigns the event time.
    assert payload.timestamp_attribute == ""
    assert payload.with_attributes


def test_every_stage_and_sink_is_in_the_graph(transforms):
    for step in (
        "ParseAndValidate",
        "WindowAndAggregate/AggregateFixed1m",
        "WindowAndAggregate/AggregateSliding5m",
        "PredictAndRecord/RunInference",
        "BuildTrainingExamples",
        "MeasureOnlineQuality",
        "DecideRetraining",
    ):
        assert step in transforms, step
    tables = {
        name.split("/")[0]: _dofn(t)._display_destination.tableId
        for name, t in transforms.items()
        if name.endswith("/StreamingInsert/_StreamToBigQuery/AppendDestination")
    }
    assert tables == {
        "WriteAggregates": "aggregates",
        "WriteTrainingExamples": "training_examples",
        "WritePredictions": "predictions",
        "WritePredictionQuality": "prediction_quality",
        "WriteRetrainTriggers": "retrain_triggers",
        "WriteDeadLetters": "dead_letter",
    }
    writes = [
        t for t in transforms.values() if t.spec.urn == common_urns.composites.PUBSUB_WRITE.urn
    ]
    assert [t.unique_name for t in writes] == ["PublishRetrainTriggers/ParDo(_PubSubWriteDoFn)"]
    publish = writes[0]
    payload = beam_runner_api_pb2.PubSubWritePayload.FromString(publish.spec.payload)
    assert payload.topic == "projects/demo-project/topics/traffic-retrain"


def test_step_names_equal_the_checked_in_list(job):
    """A renamed step breaks ``--update`` (Dataflow matches steps by name).

    If the rename is intended, regenerate the list and launch the update with
    ``--transform-name-mappings`` (see docs): ``%s``.
    """
    expected = json.loads(STEP_NAMES.read_text())
    actual = job_summary(job)["steps"]
    missing, added = sorted(set(expected) - set(actual)), sorted(set(actual) - set(expected))
    assert actual == expected, (
        f"step names changed (removed: {missing}; added: {added}). If intended, run "
        f"`{REGENERATE}` and map renamed steps when updating a running job."
    )


def test_dry_run_needs_the_dataflow_runner():
    args = [a if a != "DataflowRunner" else "DirectRunner" for a in ARGS]
    with pytest.raises(ValueError, match="DataflowRunner"):
        dry_run_job(PipelineOptions(args))
