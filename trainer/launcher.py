"""The training launcher: turns retrain triggers into training runs, and rolls back.

A long-running service next to the streaming pipeline::

    python -m trainer.launcher --project P --config configs/traffic.yaml \\
        --subscription projects/P/subscriptions/retrain-launcher --bq_dataset D \\
        --registry .local/registry [--backend local|vertex] [--max-concurrent 1] \\
        [--poll-seconds 2] [--monitor-seconds 15] [--grace-seconds 120] \\
        [--duration SECONDS] [--state-dir DIR] [--stats-file PATH]

    # Vertex AI (the trainer runs as a CustomJob from this repo's sdist):
    ... --backend vertex --registry gs://BUCKET/registry --vertex-region europe-west4 \\
        --vertex-staging-bucket gs://BUCKET/staging \\
        --vertex-container-uri REGION-docker.pkg.dev/vertex-ai/training/IMAGE:TAG \\
        [--vertex-machine-type n1-standard-4] [--vertex-service-account SA] \\
        [--vertex-package-uri gs://.../pkg.tar.gz] [--vertex-config-uri gs://.../c.yaml]

Loop (every ``--poll-seconds``):

1. **Reap** finished jobs: a job that ended is matched with its latest
   ``training_runs`` row; the trainer records ``succeeded``/``rejected``/``failed``
   itself, and if it died (non-zero exit, Vertex job failed) without doing so the
   launcher records ``failed`` with the exit code and the tail of its log.
2. **Start** recovered runs (see crash safety) while a slot is free.
3. **Pull** trigger messages synchronously (``SubscriberClient.pull`` with a
   bounded timeout, at most as many as there are free slots). For each:
   parse and validate (malformed: log, ack, count); **idempotency**: if
   ``training_runs`` already has a row for the ``trigger_id``
   (``trainer.runs.latest_run_status``), ack and count a duplicate; otherwise
   record a ``queued`` row (run id ``run-<trigger_id>``), *then* ack, *then*
   submit the job to the backend.
4. **Monitor** (every ``--monitor-seconds``): automatic rollback of a new model
   version that does worse online than the one it replaced (``should_roll_back``).
5. Rewrite the **stats file** (JSON) and, every 30 s, log a progress line.

Debounce: at most ``--max-concurrent`` jobs run at once. While every slot is
taken the launcher does **not pull**: triggers that arrive meanwhile wait,
unacknowledged, in the Pub/Sub subscription (durable, in order of arrival
for practical purposes), and are pulled and started one by one when slots free
up. Nothing is dropped; nothing is leased, so no ack deadline runs out while
they wait. (Coalescing a backlog into one run would be a policy change: each
trigger gets its own run.)

Crash safety: the order *record queued -> ack -> submit* means a crash

* before the ``queued`` row: the message is redelivered and handled normally;
* between the row and the ack: the redelivered message is a duplicate (acked);
* between the ack and the submit: the run is ``queued`` but never started. At
  start-up the launcher looks for runs whose latest status is ``queued``
  (``queued_runs``) and starts them.

Every submitted job also gets a small record in ``<state dir>/inflight/``
(pid or Vertex job name). A restarted launcher re-attaches to jobs that are
still running (so they are not started twice) and settles those that ended
while it was away. Runs whose latest status is ``running`` but that no record
describes (state dir lost) are only reported.

Shutdown (SIGTERM/SIGINT, or ``--duration`` elapsed): stop pulling, wait up to
``--grace-seconds`` for local jobs to finish, then terminate the rest and
record them ``queued`` again (the next launcher start re-runs them). Vertex
jobs keep running remotely; the next launcher re-attaches to them. The stats
file is written last.

Automatic rollback: the current version is judged against the version it
replaced (``CURRENT``'s ``previous``) on the ``prediction_quality`` table
(progressive validation in the stream): the current version's windows computed
since its promotion versus the previous version's most recent
``--baseline-windows`` windows. ``should_roll_back`` decides; a rollback calls
``ModelRegistry.rollback(to_version=previous)`` and records a ``rolled_back``
row for the training run that produced the version. A version that became
current by a rollback is not judged (that would flip-flop).

Stats file keys: ``triggers_received``, ``duplicate_triggers``,
``malformed_triggers``, ``runs_started``, ``runs_succeeded``, ``runs_rejected``,
``runs_failed``, ``rollbacks``, ``in_flight`` and a few more (``pending``,
``runs_requeued``, ``runs_recovered``, ``errors``, ``current_version``,
``last_rollback``, ``updated_at``).
"""

from __future__ import annotations

import abc
import argparse
import collections
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dataset.config import DatasetConfig, RetrainingPolicy, load_config

logger = logging.getLogger("trainer.launcher")

TRIGGER_REASONS = ("new_data", "schedule", "quality")
TERMINAL_STATUSES = ("succeeded", "rejected", "failed")
ROLLED_BACK = "rolled_back"
TRAINER_MODULE = "trainer.task"
API_TIMEOUT_SECONDS = 30.0
PROGRESS_EVERY_SECONDS = 30.0
DEFAULT_VERTEX_POLL_SECONDS = 30.0
_TOLERANCE = 1e-9  # float noise: a drop of exactly the margin is not "more than" it
_TRIGGER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
REPO_ROOT = Path(__file__).resolve().parents[1]


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _to_datetime(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return dt.datetime.fromtimestamp(float(value), tz=dt.UTC)
    text = str(value).strip().replace("Z", "+00:00")
    parsed = dt.datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


# ---------------------------------------------------------------- triggers and runs


class MalformedTrigger(ValueError):
    """A trigger message that cannot be turned into a run."""


@dataclasses.dataclass(frozen=True)
class Trigger:
    """A parsed retrain trigger (the JSON the streaming pipeline publishes)."""

    trigger_id: str
    dataset: str
    reason: str
    sequence: int
    new_examples: int | None = None
    total_examples: int | None = None
    event_time_start: str | None = None
    event_time_end: str | None = None
    details: Any = None
    created_at: str | None = None


def parse_trigger(data: bytes | str, attributes: Mapping[str, str] | None, dataset: str) -> Trigger:
    """Parses and validates one trigger message.

    Args:
        data: the message body: a JSON object.
        attributes: the message attributes; a ``trigger_id`` attribute, when
            present, must equal the body's.
        dataset: the config's dataset name; a trigger for another dataset is refused.

    Raises:
        MalformedTrigger: naming what is wrong.
    """
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MalformedTrigger(f"not JSON: {e}") from None
    if not isinstance(body, dict):
        raise MalformedTrigger(f"expected a JSON object, got {type(body).__name__}")
    trigger_id = body.get("trigger_id")
    if not isinstance(trigger_id, str) or not _TRIGGER_ID_RE.match(trigger_id):
        raise MalformedTrigger(
            f"trigger_id {trigger_id!r} is missing or invalid (letters, digits, _.:- ; <= 128)"
        )
    attr_id = (attributes or {}).get("trigger_id")
    if attr_id is not None and attr_id != trigger_id:
        raise MalformedTrigger(f"attribute trigger_id {attr_id!r} != body trigger_id")
    if body.get("dataset") != dataset:
        raise MalformedTrigger(
            f"trigger {trigger_id} is for dataset {body.get('dataset')!r}, not {dataset!r}"
        )
    reason = body.get("reason")
    if reason not in TRIGGER_REASONS:
        raise MalformedTrigger(
            f"trigger {trigger_id}: reason {reason!r} not in {', '.join(TRIGGER_REASONS)}"
        )
    sequence = body.get("sequence")
    if isinstance(sequence, bool) or not isinstance(sequence, int):
        raise MalformedTrigger(f"trigger {trigger_id}: sequence {sequence!r} is not an integer")
    counts = {}
    for key in ("new_examples", "total_examples"):
        value = body.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise MalformedTrigger(f"trigger {trigger_id}: {key} {value!r} is not an integer")
        counts[key] = value
    times = {}
    for key in ("event_time_start", "event_time_end", "created_at"):
        value = body.get(key)
        if value is not None:
            try:
                _to_datetime(value)
            except (TypeError, ValueError):
                raise MalformedTrigger(
                    f"trigger {trigger_id}: {key} {value!r} is not a time"
                ) from None
        times[key] = value
    return Trigger(
        trigger_id=trigger_id,
        dataset=dataset,
        reason=reason,
        sequence=sequence,
        details=body.get("details"),
        **counts,
        **times,
    )


def run_id_for(trigger_id: str) -> str:
    """The run id of a trigger's run: deterministic, so a redelivery maps to the same run."""
    return f"run-{trigger_id}"


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run to start (queued in ``training_runs``)."""

    run_id: str
    trigger_id: str
    dataset: str
    reason: str | None = None

    @classmethod
    def from_trigger(cls, trigger: Trigger) -> Run:
        return cls(
            run_id_for(trigger.trigger_id), trigger.trigger_id, trigger.dataset, trigger.reason
        )


@dataclasses.dataclass(frozen=True)
class JobArgs:
    """What every trainer invocation gets (besides the run and trigger ids)."""

    config_path: str
    project: str
    bq_dataset: str
    registry: str

    def trainer_args(self, run: Run, backend: str) -> list[str]:
        """The ``python -m trainer.task`` arguments for ``run``."""
        return [
            "--config",
            self.config_path,
            "--project",
            self.project,
            "--bq_dataset",
            self.bq_dataset,
            "--registry",
            self.registry,
            "--run-id",
            run.run_id,
            "--trigger-id",
            run.trigger_id,
            "--backend",
            backend,
        ]


# ---------------------------------------------------------------- BigQuery access


def _runs_api():
    """``trainer.runs`` (written by the trainer; imported late so this module stays light)."""
    from trainer import runs

    return runs


def runs_table(project: str, dataset: str, config: DatasetConfig) -> str:
    """``project.dataset.training_runs`` (as ``trainer.runs.runs_table``)."""
    return f"{project}.{dataset}.{config.tables.training_runs}"


def quality_table(project: str, dataset: str, config: DatasetConfig) -> str:
    return f"{project}.{dataset}.{config.tables.prediction_quality}"


def _query(client, sql: str, params: Sequence[tuple[str, str, Any]] = ()) -> list[dict]:
    from google.cloud import bigquery

    job_config = bigquery.QueryJobConfig(
        query_parameters=[bigquery.ScalarQueryParameter(n, t, v) for n, t, v in params]
    )
    result = client.query(sql, job_config=job_config, timeout=API_TIMEOUT_SECONDS)
    return [dict(row) for row in result.result(timeout=API_TIMEOUT_SECONDS)]


def latest_run_statuses(
    client, project: str, dataset: str, config: DatasetConfig, status: str | None = None
) -> list[dict]:
    """The latest ``training_runs`` row of every run of this dataset (optionally of a status)."""
    table = runs_table(project, dataset, config)
    sql = (
        "SELECT * EXCEPT(_rn) FROM (SELECT *, ROW_NUMBER() OVER "
        "(PARTITION BY run_id ORDER BY recorded_at DESC) AS _rn "
        f"FROM `{table}` WHERE dataset = @dataset) WHERE _rn = 1"
    )
    params = [("dataset", "STRING", config.name)]
    if status is not None:
        sql += " AND status = @status"
        params.append(("status", "STRING", status))
    return _query(client, sql + " ORDER BY recorded_at", params)


def queued_runs(client, project: str, dataset: str, config: DatasetConfig) -> list[Run]:
    """Runs recorded ``queued`` whose latest status is still ``queued`` (never started)."""
    rows = latest_run_statuses(client, project, dataset, config, status="queued")
    return [
        Run(r["run_id"], r["trigger_id"], r.get("dataset") or config.name, r.get("reason"))
        for r in rows
    ]


def quality_rows(
    client, project: str, dataset: str, config: DatasetConfig, versions: Sequence[str]
) -> list[dict]:
    """``prediction_quality`` rows of the given model versions."""
    names = [f"@v{i}" for i in range(len(versions))]
    sql = (
        "SELECT model_version, window_start, window_end, examples, accuracy, log_loss, "
        f"mae, rmse, pane_index, computed_at FROM `{quality_table(project, dataset, config)}` "
        f"WHERE model_version IN ({', '.join(names)})"
    )
    return _query(client, sql, [(f"v{i}", "STRING", v) for i, v in enumerate(versions)])


def run_for_version(client, project: str, dataset: str, config: DatasetConfig, version: str):
    """The latest ``training_runs`` row that names ``version`` (the run that produced it)."""
    sql = (
        f"SELECT * FROM `{runs_table(project, dataset, config)}` "
        "WHERE model_version = @version ORDER BY recorded_at DESC LIMIT 1"
    )
    rows = _query(client, sql, [("version", "STRING", version)])
    return rows[0] if rows else None


# ---------------------------------------------------------------- rollback decision


def summarize_quality(
    rows: Iterable[Mapping[str, Any]],
    since: dt.datetime | str | None = None,
    last_windows: int | None = None,
) -> dict[str, Any]:
    """Aggregates ``prediction_quality`` rows of ONE model version.

    The stream writes accumulating panes (EARLY/ON_TIME/LATE) per window, so
    only the latest pane of each window counts (highest ``pane_index``; rows
    written before that column existed rank below, by ``computed_at``, then
    most examples). Windows computed before ``since`` are left out; with
    ``last_windows`` only the newest that many windows (by ``window_end``) count.

    Returns:
        ``{"examples", "windows", "accuracy", "log_loss", "mae", "rmse"}``:
        example-weighted means (rmse pooled as sqrt of the weighted mean square);
        a metric is None if no window has it.
    """
    since_dt = _to_datetime(since) if since is not None else None
    latest: dict[Any, Mapping[str, Any]] = {}
    for row in rows:
        key = _to_datetime(row["window_start"])
        pane = row.get("pane_index")
        order = (
            -1 if pane is None else int(pane),
            _to_datetime(row.get("computed_at")) or dt.datetime.min.replace(tzinfo=dt.UTC),
            int(row.get("examples") or 0),
        )
        kept = latest.get(key)
        if kept is None or order > kept["_order"]:
            latest[key] = {**row, "_order": order}
    windows = list(latest.values())
    if since_dt is not None:
        windows = [w for w in windows if w["_order"][1] >= since_dt]
    windows.sort(key=lambda w: _to_datetime(w.get("window_end") or w["window_start"]))
    if last_windows is not None:
        windows = windows[-last_windows:] if last_windows > 0 else []
    total = sum(int(w.get("examples") or 0) for w in windows)
    out: dict[str, Any] = {"examples": total, "windows": len(windows)}
    for metric in ("accuracy", "log_loss", "mae", "rmse"):
        pairs = [
            (int(w.get("examples") or 0), float(w[metric]))
            for w in windows
            if w.get(metric) is not None and int(w.get("examples") or 0) > 0
        ]
        n = sum(p[0] for p in pairs)
        if not n:
            out[metric] = None
        elif metric == "rmse":
            out[metric] = math.sqrt(sum(k * v * v for k, v in pairs) / n)
        else:
            out[metric] = sum(k * v for k, v in pairs) / n
    return out


def should_roll_back(
    current_quality: Mapping[str, Any] | None,
    previous_quality: Mapping[str, Any] | None,
    policy: RetrainingPolicy,
    task: str,
) -> tuple[bool, str]:
    """Whether the current model version should be rolled back (pure).

    Both versions need at least ``policy.quality_min_examples`` scored examples.
    Binary classification: roll back when the current accuracy is more than
    ``policy.rollback_margin`` (absolute) below the previous version's.
    Regression: roll back when the current RMSE exceeds the previous one by more
    than ``rollback_margin`` *relative* to it (RMSE has the label's scale, so an
    absolute margin would mean different things per dataset).

    Args:
        current_quality / previous_quality: ``summarize_quality`` results (or None).
        policy: the dataset's retraining policy.
        task: ``binary_classification`` or ``regression``.

    Returns:
        (decision, reason): the reason explains either way.
    """
    need = policy.quality_min_examples
    margin = policy.rollback_margin
    cur_n = int((current_quality or {}).get("examples") or 0)
    prev_n = int((previous_quality or {}).get("examples") or 0)
    if cur_n < need:
        return False, f"current version has {cur_n} scored examples, needs {need}"
    if prev_n < need:
        return False, f"previous version has {prev_n} scored examples, needs {need}"
    if task == "regression":
        cur, prev = current_quality.get("rmse"), previous_quality.get("rmse")
        if cur is None or prev is None:
            return False, "no rmse to compare"
        limit = prev * (1.0 + margin)
        text = (
            f"online rmse {cur:.4f} ({cur_n} examples) vs previous version {prev:.4f} "
            f"({prev_n} examples); limit {limit:.4f} (+{margin:.0%})"
        )
        return cur > limit + _TOLERANCE, text
    if task != "binary_classification":
        raise ValueError(f"unknown task {task!r}")
    cur, prev = current_quality.get("accuracy"), previous_quality.get("accuracy")
    if cur is None or prev is None:
        return False, "no accuracy to compare"
    drop = prev - cur
    text = (
        f"online accuracy {cur:.4f} ({cur_n} examples) vs previous version {prev:.4f} "
        f"({prev_n} examples): drop {drop:+.4f}, margin {margin:.4f}"
    )
    return drop > margin + _TOLERANCE, text


# ---------------------------------------------------------------- backends


@dataclasses.dataclass(frozen=True)
class JobState:
    """What a backend knows about a job: ``running``, ``exited`` (ok) or ``failed``.

    ``exited`` means the job ended without an error (exit status 0 / Vertex
    SUCCEEDED); the trainer's own ``training_runs`` row says whether it
    succeeded or was rejected. ``unknown`` means it ended but the backend cannot
    tell how (a re-attached process that was not our child).
    """

    state: str
    detail: str = ""

    @property
    def done(self) -> bool:
        return self.state != "running"


class Backend(abc.ABC):
    """Runs ``trainer.task`` for a run somewhere."""

    name = "abstract"
    poll_interval_seconds = 0.0
    keeps_running_on_shutdown = False

    @abc.abstractmethod
    def submit(self, run: Run) -> Any:
        """Starts the job without waiting; returns a handle."""

    @abc.abstractmethod
    def poll(self, handle: Any) -> JobState:
        """The job's state now (never blocks for long)."""

    def stop(self, handle: Any, timeout: float = 15.0) -> None:  # noqa: B027
        """Stops the job (shutdown after the grace period)."""

    @abc.abstractmethod
    def describe(self, handle: Any) -> dict[str, Any]:
        """A JSON-able description for the state dir (used to re-attach)."""

    @abc.abstractmethod
    def reattach(self, record: Mapping[str, Any]) -> Any | None:
        """A handle for a described job that still runs, or None if it ended."""


@dataclasses.dataclass
class LocalHandle:
    run_id: str
    pid: int
    log_path: str
    process: subprocess.Popen | None = None  # None when re-attached after a restart


def _log_tail(path: str, lines: int = 5) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            tail = collections.deque(f, maxlen=lines)
    except OSError:
        return ""
    return " | ".join(line.rstrip() for line in tail if line.strip())


def _pid_runs(pid: int, marker: str) -> bool:
    """Whether ``pid`` is alive, not a zombie, and (Linux) its command line has ``marker``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path(f"/proc/{pid}")
    if not proc.exists():
        return True
    try:
        for _ in range(10):
            if ") Z " in (proc / "stat").read_text():
                return False
            cmdline = (proc / "cmdline").read_bytes()
            if cmdline:
                return marker.encode() in cmdline
            time.sleep(0.02)  # empty while the process is in the middle of exec
    except OSError:
        return False
    return True  # alive, command line unreadable: assume it is ours


class LocalProcessBackend(Backend):
    """Runs the trainer as a local subprocess; one log file per run.

    Args:
        job_args: the trainer's common arguments.
        state_dir: logs go to ``<state_dir>/logs/<run_id>.log`` (appended).
        program: the command before the arguments; default
            ``[sys.executable, "-m", "trainer.task"]``. Tests inject a stand-in
            that takes the same arguments.
        env: the child's environment (default: this process's).
        cwd: the child's working directory (default: this process's).
    """

    name = "local"

    def __init__(
        self,
        job_args: JobArgs,
        state_dir: str | os.PathLike,
        program: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ):
        self.job_args = job_args
        self.log_dir = Path(state_dir) / "logs"
        self.program = list(program or [sys.executable, "-m", TRAINER_MODULE])
        self.env = dict(env) if env is not None else None
        self.cwd = cwd

    def command(self, run: Run) -> list[str]:
        return self.program + self.job_args.trainer_args(run, self.name)

    def submit(self, run: Run) -> LocalHandle:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{run.run_id}.log"
        cmd = self.command(run)
        with open(log_path, "ab") as log:
            log.write(f"--- {_now_iso()} launcher: {' '.join(cmd)}\n".encode())
            log.flush()
            process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,  # Ctrl-C on the launcher must not kill it at once
            )
        return LocalHandle(run.run_id, process.pid, str(log_path), process)

    def poll(self, handle: LocalHandle) -> JobState:
        if handle.process is None:
            if _pid_runs(handle.pid, handle.run_id):
                return JobState("running")
            return JobState("unknown", f"process {handle.pid} ended while the launcher was away")
        code = handle.process.poll()
        if code is None:
            return JobState("running")
        if code == 0:
            return JobState("exited")
        tail = _log_tail(handle.log_path)
        return JobState(
            "failed", f"trainer exited with status {code}; log {handle.log_path}: {tail}"
        )

    def stop(self, handle: LocalHandle, timeout: float = 15.0) -> None:
        """SIGTERM to the job's process group; SIGKILL after ``timeout`` seconds."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(handle.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if handle.process is not None:
                if handle.process.poll() is not None:
                    return
            elif not _pid_runs(handle.pid, handle.run_id):
                return
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(handle.pid, signal.SIGKILL)
        if handle.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                handle.process.wait(5)

    def describe(self, handle: LocalHandle) -> dict[str, Any]:
        return {"kind": "local", "pid": handle.pid, "log_path": handle.log_path}

    def reattach(self, record: Mapping[str, Any]) -> LocalHandle | None:
        pid, run_id = int(record["pid"]), str(record["run_id"])
        if not _pid_runs(pid, run_id):
            return None
        return LocalHandle(run_id, pid, str(record.get("log_path", "")), None)


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


def vertex_job_spec(run: Run, settings: VertexSettings) -> dict[str, Any]:
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
                    "args": settings.job.trainer_args(run, "vertex"),
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
        self.credentials = credentials
        self.poll_interval_seconds = poll_interval_seconds

    def build_job(self, run: Run):
        return build_custom_job(
            vertex_job_spec(run, self.settings), self.settings, self.credentials
        )

    def submit(self, run: Run) -> VertexHandle:
        job = self.build_job(run)
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


# ---------------------------------------------------------------- the launcher


@dataclasses.dataclass
class _InFlight:
    run: Run
    handle: Any
    started: float
    last_poll: float = 0.0


STAT_KEYS = (
    "triggers_received",
    "duplicate_triggers",
    "malformed_triggers",
    "runs_started",
    "runs_succeeded",
    "runs_rejected",
    "runs_failed",
    "runs_requeued",
    "runs_recovered",
    "rollbacks",
    "errors",
)


class Launcher:
    """The launcher's state and loop; see the module docstring.

    Args:
        config: the dataset config.
        project: project of the subscription and (``bq_project``) BigQuery.
        subscription: ``projects/<p>/subscriptions/<s>`` of the retrain topic.
        bq_dataset: the BigQuery dataset with ``training_runs``/``prediction_quality``.
        backend: where jobs run.
        bq_client: a ``google.cloud.bigquery.Client``.
        subscriber: a ``pubsub_v1.SubscriberClient`` (default: a new one).
        registry: a ``ModelRegistry`` for the rollback monitor (None: no monitor).
        state_dir: in-flight records (``inflight/``) and the local backend's logs.
        stats_file: JSON stats path (default ``<state_dir>/stats.json``).
    """

    def __init__(
        self,
        config: DatasetConfig,
        project: str,
        subscription: str,
        bq_dataset: str,
        backend: Backend,
        bq_client,
        *,
        subscriber=None,
        registry=None,
        bq_project: str | None = None,
        max_concurrent: int = 1,
        poll_seconds: float = 2.0,
        monitor_seconds: float = 15.0,
        baseline_windows: int = 10,
        grace_seconds: float = 120.0,
        state_dir: str | os.PathLike = ".local/launcher",
        stats_file: str | os.PathLike | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be >= 1")
        self.config = config
        self.project = project
        self.bq_project = bq_project or project
        self.subscription = subscription
        self.bq_dataset = bq_dataset
        self.backend = backend
        self.client = bq_client
        self._subscriber = subscriber
        self.registry = registry
        self.max_concurrent = max_concurrent
        self.poll_seconds = poll_seconds
        self.monitor_seconds = monitor_seconds
        self.baseline_windows = baseline_windows
        self.grace_seconds = grace_seconds
        self.state_dir = Path(state_dir)
        self.inflight_dir = self.state_dir / "inflight"
        self.stats_file = Path(stats_file) if stats_file else self.state_dir / "stats.json"
        self.clock = clock
        self.in_flight: dict[str, _InFlight] = {}
        self.pending: collections.deque[Run] = collections.deque()
        self.stats: dict[str, Any] = dict.fromkeys(STAT_KEYS, 0)
        self.stats.update(current_version=None, last_rollback=None, monitor=None)
        self.stopping = False
        self._last_monitor = -math.inf
        self._last_progress = clock()
        self._monitor_notes: dict[str, str] = {}

    # ------------------------------------------------------------ helpers

    @property
    def runs_table(self) -> str:
        return runs_table(self.bq_project, self.bq_dataset, self.config)

    @property
    def subscriber(self):
        if self._subscriber is None:
            from google.cloud import pubsub_v1

            self._subscriber = pubsub_v1.SubscriberClient()
        return self._subscriber

    @property
    def free_slots(self) -> int:
        return max(0, self.max_concurrent - len(self.in_flight))

    def _record(self, run: Run, status: str, **fields: Any) -> None:
        row = {
            "run_id": run.run_id,
            "trigger_id": run.trigger_id,
            "dataset": run.dataset,
            "backend": self.backend.name,
            "status": status,
            "recorded_at": _now_iso(),
            **fields,
        }
        runs = _runs_api()
        if status == ROLLED_BACK:
            # Not a status of the run's own life cycle, so record_run_status refuses it;
            # the same schema check and insert, without that restriction.
            from dataset.tables import TRAINING_RUNS_SCHEMA

            runs.insert_typed_rows(self.client, self.runs_table, [row], TRAINING_RUNS_SCHEMA)
        else:
            runs.record_run_status(self.client, self.runs_table, row)

    def _latest(self, trigger_id: str) -> dict | None:
        return _runs_api().latest_run_status(
            self.client, self.bq_project, self.bq_dataset, self.config, trigger_id
        )

    def _record_path(self, run_id: str) -> Path:
        return self.inflight_dir / f"{run_id}.json"

    def _write_record(self, entry: _InFlight) -> None:
        self.inflight_dir.mkdir(parents=True, exist_ok=True)
        record = {
            **dataclasses.asdict(entry.run),
            "backend": self.backend.name,
            "submitted_at": _now_iso(),
            **self.backend.describe(entry.handle),
        }
        path = self._record_path(entry.run.run_id)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(path)

    def _drop_record(self, run_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._record_path(run_id).unlink()

    # ------------------------------------------------------------ start-up

    def recover(self) -> None:
        """Re-attaches to jobs of a previous launcher; queues runs recorded but never started."""
        adopted: set[str] = set()
        if self.inflight_dir.is_dir():
            for path in sorted(self.inflight_dir.glob("*.json")):
                try:
                    record = json.loads(path.read_text())
                    run = Run(
                        record["run_id"],
                        record["trigger_id"],
                        record["dataset"],
                        record.get("reason"),
                    )
                except (OSError, ValueError, KeyError) as e:
                    logger.warning("ignoring unreadable in-flight record %s: %s", path, e)
                    continue
                if record.get("backend") != self.backend.name:
                    logger.warning(
                        "in-flight record %s is for backend %s, not %s; left alone",
                        path,
                        record.get("backend"),
                        self.backend.name,
                    )
                    continue
                adopted.add(run.run_id)
                handle = self.backend.reattach(record)
                if handle is None:
                    logger.info("%s ended while the launcher was away; settling it", run.run_id)
                    self._settle(run, JobState("unknown", "job ended while the launcher was away"))
                    continue
                logger.info("re-attached to %s (%s)", run.run_id, self.backend.describe(handle))
                self.in_flight[run.run_id] = _InFlight(run, handle, self.clock())
        for run in queued_runs(self.client, self.bq_project, self.bq_dataset, self.config):
            if run.run_id in adopted or run.run_id in self.in_flight:
                continue
            logger.info("recovering %s: queued but never started", run.run_id)
            self.pending.append(run)
            self.stats["runs_recovered"] += 1
        running = latest_run_statuses(
            self.client, self.bq_project, self.bq_dataset, self.config, status="running"
        )
        for row in running:
            if row["run_id"] not in adopted:
                logger.warning(
                    "run %s is 'running' in %s but no in-flight record describes it "
                    "(another launcher, or a lost state dir); not touched",
                    row["run_id"],
                    self.runs_table,
                )

    # ------------------------------------------------------------ running jobs

    def start(self, run: Run) -> bool:
        """Submits ``run`` to the backend; on failure records it ``failed``."""
        try:
            handle = self.backend.submit(run)
        except Exception as e:
            logger.exception("could not start %s", run.run_id)
            self.stats["runs_failed"] += 1
            with contextlib.suppress(Exception):
                self._record(
                    run,
                    "failed",
                    error=f"submit failed: {type(e).__name__}: {e}"[:2000],
                    finished_at=_now_iso(),
                )
            return False
        entry = _InFlight(run, handle, self.clock())
        self.in_flight[run.run_id] = entry
        self._write_record(entry)
        self.stats["runs_started"] += 1
        logger.info(
            "started %s (trigger %s, %s) on %s: %s",
            run.run_id,
            run.trigger_id,
            run.reason,
            self.backend.name,
            self.backend.describe(handle),
        )
        return True

    def _settle(self, run: Run, job: JobState) -> str:
        """Counts a finished job by its latest ``training_runs`` status; records ``failed``
        if the job ended without the trainer recording a terminal status."""
        latest = self._latest(run.trigger_id)
        status = (latest or {}).get("status")
        if status not in TERMINAL_STATUSES:
            if job.state == "exited":
                error = "trainer exited successfully without recording a terminal status"
            else:
                error = job.detail or "job ended without recording a terminal status"
            self._record(run, "failed", error=error[:2000], finished_at=_now_iso())
            status = "failed"
        key = f"runs_{status}"
        self.stats[key] = self.stats.get(key, 0) + 1
        self._drop_record(run.run_id)
        level = logging.INFO if status != "failed" else logging.WARNING
        logger.log(
            level,
            "%s finished: %s%s",
            run.run_id,
            status,
            f" ({job.detail})" if job.detail and status == "failed" else "",
        )
        return status

    def reap(self) -> None:
        """Polls in-flight jobs and settles the finished ones."""
        now = self.clock()
        for run_id, entry in list(self.in_flight.items()):
            if now - entry.last_poll < self.backend.poll_interval_seconds:
                continue
            entry.last_poll = now
            job = self.backend.poll(entry.handle)
            if not job.done:
                continue
            try:
                self._settle(entry.run, job)
            except Exception:
                logger.exception("could not settle %s; will retry", run_id)
                self.stats["errors"] += 1
                continue
            del self.in_flight[run_id]

    def start_pending(self) -> None:
        while self.pending and self.free_slots and not self.stopping:
            self.start(self.pending.popleft())

    # ------------------------------------------------------------ triggers

    def _ack(self, ack_id: str) -> None:
        self.subscriber.acknowledge(
            request={"subscription": self.subscription, "ack_ids": [ack_id]},
            timeout=API_TIMEOUT_SECONDS,
        )

    def handle_message(self, ack_id: str, data: bytes, attributes: Mapping[str, str]) -> str:
        """Handles one pulled trigger; returns ``malformed``/``duplicate``/``queued``/``error``."""
        self.stats["triggers_received"] += 1
        try:
            trigger = parse_trigger(data, attributes, self.config.name)
        except MalformedTrigger as e:
            logger.warning("malformed trigger (acked and dropped): %s; data=%r", e, data[:200])
            self.stats["malformed_triggers"] += 1
            self._ack(ack_id)
            return "malformed"
        run = Run.from_trigger(trigger)
        try:
            existing = self._latest(trigger.trigger_id)
            if existing is not None:
                logger.info(
                    "duplicate trigger %s (run %s is %s): acked",
                    trigger.trigger_id,
                    existing.get("run_id"),
                    existing.get("status"),
                )
                self.stats["duplicate_triggers"] += 1
                self._ack(ack_id)
                return "duplicate"
            self._record(
                run,
                "queued",
                reason=trigger.reason,
                data_start=trigger.event_time_start,
                data_end=trigger.event_time_end,
            )
        except Exception:
            # Not acked: Pub/Sub redelivers it after the ack deadline.
            logger.exception(
                "could not queue trigger %s; it will be redelivered", trigger.trigger_id
            )
            self.stats["errors"] += 1
            return "error"
        logger.info(
            "queued %s for trigger %s (%s, %s new examples)",
            run.run_id,
            trigger.trigger_id,
            trigger.reason,
            trigger.new_examples,
        )
        try:
            self._ack(ack_id)
        except Exception:  # redelivery will be a duplicate: harmless
            logger.exception("ack of trigger %s failed", trigger.trigger_id)
        if self.free_slots:
            self.start(run)
        else:
            self.pending.append(run)
        return "queued"

    def pull_once(self, timeout: float | None = None) -> int:
        """Pulls up to ``free_slots`` triggers and handles them; returns how many arrived."""
        from google.api_core import exceptions as gexc

        if self.stopping or not self.free_slots or self.pending:
            return 0
        try:
            response = self.subscriber.pull(
                request={"subscription": self.subscription, "max_messages": self.free_slots},
                timeout=timeout if timeout is not None else max(1.0, self.poll_seconds),
                retry=None,  # the loop is the retry; a client retry could block for a minute
            )
        except (gexc.DeadlineExceeded, gexc.ServiceUnavailable) as e:
            logger.debug("pull: %s", type(e).__name__)
            return 0
        for received in response.received_messages:
            msg = received.message
            self.handle_message(received.ack_id, msg.data, dict(msg.attributes))
        return len(response.received_messages)

    # ------------------------------------------------------------ monitor

    def _note(self, version: str, text: str) -> None:
        """Logs a monitor finding once per (version, text)."""
        if self._monitor_notes.get(version) != text:
            self._monitor_notes[version] = text
            logger.info("monitor: %s: %s", version, text)
        self.stats["monitor"] = {"version": version, "note": text, "at": _now_iso()}

    def confirm_offline(self, current: str, previous: str, since: Any) -> tuple[bool, str]:
        """Scores both versions on the same labeled rows since ``since``.

        Online quality compares the new version's windows with the previous
        version's *earlier* windows; under concept drift both degrade, and the
        drop says nothing about which model is better. So a rollback must also
        hold on the same recent rows: the previous version must beat the current
        one there by ``rollback_margin`` (accuracy; RMSE relative for regression).
        Too few rows to tell: the online evidence stands.
        """
        from model.features import encode_batch, label_array
        from trainer.data import read_training_window
        from trainer.metrics import evaluate

        policy, task = self.config.retraining, self.config.label.task
        rows = read_training_window(
            self.client, self.bq_project, self.bq_dataset, self.config, start=since
        )
        if len(rows) < policy.quality_min_examples:
            return True, f"only {len(rows)} labeled rows since promotion: online evidence stands"
        x, y = encode_batch(rows, self.config), label_array(rows, self.config)
        cur = evaluate(self.registry.load_keras(current), x, y, task)
        prev = evaluate(self.registry.load_keras(previous), x, y, task)
        if task == "binary_classification":
            worse = prev["accuracy"] - cur["accuracy"] > policy.rollback_margin
            facts = f"accuracy {cur['accuracy']:.4f} vs previous {prev['accuracy']:.4f}"
        else:
            worse = cur["rmse"] > prev["rmse"] * (1 + policy.rollback_margin)
            facts = f"rmse {cur['rmse']:.4f} vs previous {prev['rmse']:.4f}"
        return worse, f"on the same {len(rows)} recent labeled rows: {facts}"

    def monitor_once(self) -> bool:
        """Checks the current version against the previous one; rolls back if needed."""
        if self.registry is None:
            return False
        pointer = self.registry.current_pointer()
        if pointer is None:
            return False
        current = str(pointer["version"])
        self.stats["current_version"] = current
        previous = pointer.get("previous")
        if not previous:
            self._note(current, "no previous version to compare with")
            return False
        last_event = next(
            (e for e in reversed(self.registry.history()) if e.get("version") == current), None
        )
        if last_event is not None and last_event.get("action") == "rollback":
            self._note(current, "became current by a rollback; not judged")
            return False
        info = self.registry.get(current)
        prev_info = self.registry.get(previous)
        if prev_info.status in ("rejected", "rolled-back"):
            self._note(current, f"previous version {previous} is {prev_info.status}")
            return False
        since = info.metadata.get("promoted_at") or pointer.get("updated_at")
        rows = quality_rows(
            self.client, self.bq_project, self.bq_dataset, self.config, [current, previous]
        )
        cur_q = summarize_quality([r for r in rows if r["model_version"] == current], since=since)
        prev_q = summarize_quality(
            [r for r in rows if r["model_version"] == previous], last_windows=self.baseline_windows
        )
        decision, reason = should_roll_back(
            cur_q, prev_q, self.config.retraining, self.config.label.task
        )
        self._note(current, reason)
        if not decision:
            return False
        confirmed, offline = self.confirm_offline(current, previous, since)
        if not confirmed:
            self._note(current, f"online drop not confirmed offline, kept: {offline}")
            return False
        reason = f"{reason}; {offline}"
        text = f"automatic rollback: {reason}"
        self.registry.rollback(to_version=previous, reason=text)
        self.stats["rollbacks"] += 1
        self.stats["last_rollback"] = {
            "from": current,
            "to": previous,
            "reason": reason,
            "at": _now_iso(),
        }
        logger.warning("rolled back %s -> %s: %s", current, previous, reason)
        try:
            meta = info.metadata
            if meta.get("run_id") and meta.get("trigger_id"):  # trainer.task writes both
                produced_by = {"run_id": meta["run_id"], "trigger_id": meta["trigger_id"]}
            else:
                produced_by = run_for_version(
                    self.client, self.bq_project, self.bq_dataset, self.config, current
                )
            if produced_by is None:
                logger.info("no training run names version %s; rollback only logged", current)
            else:
                run = Run(produced_by["run_id"], produced_by["trigger_id"], self.config.name)
                self._record(
                    run,
                    ROLLED_BACK,
                    reason=text[:1000],
                    model_version=current,
                    promoted=False,
                    metrics=json.dumps({"online": cur_q, "previous_online": prev_q}),
                )
        except Exception:
            logger.exception(
                "rollback of %s done, but recording it in training_runs failed", current
            )
            self.stats["errors"] += 1
        return True

    # ------------------------------------------------------------ loop

    def snapshot(self) -> dict[str, Any]:
        return {
            **self.stats,
            "in_flight": len(self.in_flight),
            "in_flight_runs": sorted(self.in_flight),
            "pending": len(self.pending),
            "backend": self.backend.name,
            "stopping": self.stopping,
            "updated_at": _now_iso(),
        }

    def write_stats(self) -> None:
        self.stats_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.stats_file.with_name(self.stats_file.name + ".tmp")
        tmp.write_text(json.dumps(self.snapshot(), indent=2, default=str))
        tmp.replace(self.stats_file)

    def _progress(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last_progress < PROGRESS_EVERY_SECONDS:
            return
        self._last_progress = now
        s = self.snapshot()
        logger.info(
            "progress: triggers=%d dup=%d malformed=%d started=%d succeeded=%d rejected=%d "
            "failed=%d rollbacks=%d in_flight=%d pending=%d current=%s",
            s["triggers_received"],
            s["duplicate_triggers"],
            s["malformed_triggers"],
            s["runs_started"],
            s["runs_succeeded"],
            s["runs_rejected"],
            s["runs_failed"],
            s["rollbacks"],
            s["in_flight"],
            s["pending"],
            s["current_version"],
        )

    def step(self, pull_timeout: float | None = None) -> int:
        """One loop iteration; returns how many trigger messages were pulled."""
        pulled = 0
        for stage in (self.reap, self.start_pending):
            try:
                stage()
            except Exception:
                logger.exception("%s failed", stage.__name__)
                self.stats["errors"] += 1
        try:
            pulled = self.pull_once(pull_timeout)
        except Exception:
            logger.exception("pull failed")
            self.stats["errors"] += 1
        if self.clock() - self._last_monitor >= self.monitor_seconds:
            self._last_monitor = self.clock()
            try:
                self.monitor_once()
            except Exception:
                logger.exception("monitor failed")
                self.stats["errors"] += 1
        self.write_stats()
        self._progress()
        return pulled

    def request_stop(self, signum: int | None = None, frame=None) -> None:
        if not self.stopping:
            logger.info(
                "stopping (%s): no more pulls",
                signal.Signals(signum).name if signum else "requested",
            )
        self.stopping = True

    def run(self, duration: float | None = None) -> dict[str, Any]:
        """Recovers, loops until stopped (or ``duration`` seconds), shuts down; returns stats."""
        deadline = None if duration is None else self.clock() + duration
        try:
            self.recover()
        except Exception:
            logger.exception("start-up recovery failed; continuing")
            self.stats["errors"] += 1
        logger.info(
            "launcher for %s on %s: backend %s, max %d concurrent",
            self.config.name,
            self.subscription,
            self.backend.name,
            self.max_concurrent,
        )
        while not self.stopping:
            t0 = self.clock()
            pulled = self.step()
            if deadline is not None and self.clock() >= deadline:
                self.request_stop()
                break
            if not pulled:  # a pull waits by itself only when there was a slot
                remaining = self.poll_seconds - (self.clock() - t0)
                if remaining > 0:
                    time.sleep(
                        remaining
                        if deadline is None
                        else min(remaining, max(0.0, deadline - self.clock()))
                    )
        return self.shutdown()

    def shutdown(self) -> dict[str, Any]:
        """Lets local jobs finish up to the grace period, re-queues the rest, writes stats."""
        self.stopping = True
        if self.in_flight and not self.backend.keeps_running_on_shutdown:
            logger.info(
                "waiting up to %.0f s for %d running job(s)",
                self.grace_seconds,
                len(self.in_flight),
            )
            deadline = self.clock() + self.grace_seconds
            while self.in_flight and self.clock() < deadline:
                self.reap()
                if self.in_flight:
                    time.sleep(min(0.5, max(0.0, deadline - self.clock())))
            for run_id, entry in list(self.in_flight.items()):
                logger.warning(
                    "%s still running after the grace period: stopping it and "
                    "re-queueing it for the next start",
                    run_id,
                )
                self.backend.stop(entry.handle)
                try:
                    latest = self._latest(entry.run.trigger_id)
                    if (latest or {}).get("status") in TERMINAL_STATUSES:
                        self.stats[f"runs_{latest['status']}"] += 1
                    else:
                        self._record(
                            entry.run,
                            "queued",
                            reason="re-queued: the launcher shut down before the run finished",
                        )
                        self.stats["runs_requeued"] += 1
                    self._drop_record(run_id)
                except Exception:
                    logger.exception("could not re-queue %s", run_id)
                    self.stats["errors"] += 1
                del self.in_flight[run_id]
        elif self.in_flight:
            logger.info(
                "%d %s job(s) keep running; the next launcher re-attaches to them",
                len(self.in_flight),
                self.backend.name,
            )
        self.write_stats()
        self._progress(force=True)
        if self._subscriber is not None:
            with contextlib.suppress(Exception):
                self._subscriber.close()
        return self.snapshot()


# ---------------------------------------------------------------- CLI


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trainer.launcher",
        description="Start training runs for retrain triggers; roll back bad versions.",
    )
    p.add_argument("--project", required=True)
    p.add_argument("--config", required=True, help="dataset config YAML/JSON")
    p.add_argument(
        "--subscription", required=True, help="projects/<p>/subscriptions/<s> on the retrain topic"
    )
    p.add_argument("--bq_dataset", required=True)
    p.add_argument("--bq_project", help="project of the BigQuery dataset (default --project)")
    p.add_argument("--registry", required=True, help="model registry root (dir or gs://)")
    p.add_argument("--backend", choices=("local", "vertex"), default="local")
    p.add_argument("--max-concurrent", type=int, default=1)
    p.add_argument("--poll-seconds", type=float, default=2.0)
    p.add_argument("--monitor-seconds", type=float, default=15.0)
    p.add_argument(
        "--baseline-windows",
        type=int,
        default=10,
        help="previous version's newest quality windows to compare with",
    )
    p.add_argument("--no-monitor", action="store_true", help="disable automatic rollback")
    p.add_argument(
        "--grace-seconds",
        type=float,
        default=120.0,
        help="on shutdown, how long local jobs may still run",
    )
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--state-dir", help="default .local/launcher/<dataset>")
    p.add_argument("--stats-file", help="default <state dir>/stats.json")
    p.add_argument("--trainer-program", help=argparse.SUPPRESS)  # tests: replaces python -m
    v = p.add_argument_group("vertex backend")
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
    return p


def _vertex_backend(args: argparse.Namespace, job_args: JobArgs) -> VertexBackend:
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


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = _build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
        if not re.match(r"^projects/[^/]+/subscriptions/[^/]+$", args.subscription):
            raise ValueError("--subscription must be projects/<project>/subscriptions/<name>")
        if args.max_concurrent < 1:
            raise ValueError("--max-concurrent must be >= 1")
        bq_project = args.bq_project or args.project
        state_dir = Path(args.state_dir or Path(".local/launcher") / config.name)
        job_args = JobArgs(args.config, bq_project, args.bq_dataset, args.registry)
        if args.backend == "vertex":
            backend: Backend = _vertex_backend(args, job_args)
        else:
            program = args.trainer_program.split() if args.trainer_program else None
            backend = LocalProcessBackend(job_args, state_dir, program=program)
        from dataset.resources import bigquery_client
        from model.registry import ModelRegistry

        launcher = Launcher(
            config,
            args.project,
            args.subscription,
            args.bq_dataset,
            backend,
            bigquery_client(bq_project),
            registry=None if args.no_monitor else ModelRegistry(args.registry),
            bq_project=bq_project,
            max_concurrent=args.max_concurrent,
            poll_seconds=args.poll_seconds,
            monitor_seconds=args.monitor_seconds,
            baseline_windows=args.baseline_windows,
            grace_seconds=args.grace_seconds,
            state_dir=state_dir,
            stats_file=args.stats_file,
        )
    except (ValueError, subprocess.CalledProcessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, launcher.request_stop)
    signal.signal(signal.SIGINT, launcher.request_stop)
    stats = launcher.run(duration=args.duration)
    print(json.dumps(stats, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
