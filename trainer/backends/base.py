"""What every training backend does: submit ``python -m trainer.task``, poll it, stop it.

A backend runs one training job per run (``trainer.backends.local``: a local
process; ``trainer.backends.vertex``: a Vertex AI CustomJob). The launcher
keeps a JSON description of each job (``describe``) in its state directory, so
that a restarted launcher can re-attach to it (``reattach``).
"""

from __future__ import annotations

import abc
import dataclasses
import time
from collections.abc import Mapping
from typing import Any

from trainer.trigger_messages import Run

TRAINER_MODULE = "trainer.task"


@dataclasses.dataclass(frozen=True)
class JobArgs:
    """What every trainer invocation gets (besides the run and trigger ids)."""

    config_path: str
    project: str
    bq_dataset: str
    registry: str

    def trainer_args(self, run: Run, backend: str, attempt_id: str | None = None) -> list[str]:
        """The ``python -m trainer.task`` arguments for ``run`` (one submission: ``attempt_id``).

        A run the launcher timed (``run.received_at``) also gets when its trigger
        arrived and when it is submitted (now: call this right before the submit),
        the two ends of the trainer's ``launch`` phase.
        """
        attempt = ["--attempt-id", attempt_id] if attempt_id else []
        if run.received_at is not None:
            attempt += [
                "--trigger-received-at",
                f"{run.received_at:.3f}",
                "--submitted-at",
                f"{time.time():.3f}",
            ]
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
            *attempt,
        ]


@dataclasses.dataclass(frozen=True)
class JobState:
    """What a backend knows about a job: ``running``, ``exited`` (ok), ``failed``, ...

    ``exited`` means the job ended without an error (exit status 0 / Vertex
    SUCCEEDED); the trainer's own ``training_runs`` row says whether it
    succeeded or was rejected. ``refused`` means the trainer did not start
    because another trainer owns the run (``trainer.claims``). ``unknown``
    means it ended but the backend cannot tell how (a re-attached process that
    was not our child).
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
    job_args: JobArgs  # what every trainer of this backend gets (``registry``: its claims)

    @abc.abstractmethod
    def submit(self, run: Run, attempt_id: str | None = None) -> Any:
        """Starts the job for one submission (``attempt_id``) without waiting; returns a handle."""

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

    def close(self) -> None:  # noqa: B027
        """Releases what the backend holds between jobs (the launcher is shutting down)."""

    def adopt(self, run: Run, claim: Mapping[str, Any]) -> Any | None:
        """A handle for the trainer that holds ``run``'s claim, if this backend can watch it."""
        return None
