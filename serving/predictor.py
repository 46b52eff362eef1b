"""Pure request handling of the prediction service: parse, validate, route, predict.

Nothing here knows HTTP. ``parse_request`` turns a request body into
instances, ``validate_instances`` runs every instance through the pipeline's
own validation (``transforms.validation.validate_payload``: the same checks a
Pub/Sub event passes), and ``Predictor`` scores the valid records with the
same feature function (``model.features.encode_batch``) and the same loaded
model function (``model.handler.load_predict_fn``, held by a ``HotSwapModel``)
as ``RunInference`` in the streaming pipeline, so the service, the pipeline
and the batch job give the same score for the same event.

Client mistakes raise ``RequestError`` (a 4xx, with the offending field
named); anything else is the service's own fault.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from dataset.config import DatasetConfig
from model.features import encode_batch
from transforms.validation import Record, RecordError, validate_payload

LIVE = "live"
PRECOMPUTED = "precomputed"
DEFAULT_MAX_INSTANCES = 1000

_QUOTED_NAME = re.compile(r"'([A-Za-z_][A-Za-z0-9_]*)'")


class RequestError(ValueError):
    """The client's mistake: answered with ``status`` (4xx) and a JSON body.

    Attributes:
        status: the HTTP status (400 unreadable, 413 too large, 422 invalid).
        field: the request field at fault (e.g. ``instances``), or None.
        errors: per-instance findings ``{"index", "fields", "message"}``.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 422,
        field: str | None = None,
        errors: Sequence[Mapping[str, Any]] = (),
    ):
        super().__init__(message)
        self.status = status
        self.field = field
        self.errors = [dict(e) for e in errors]

    def body(self) -> dict[str, Any]:
        """The JSON error body."""
        body: dict[str, Any] = {"error": str(self), "field": self.field}
        if self.errors:
            body["errors"] = self.errors
        return body


class ModelUnavailable(RuntimeError):
    """No model version is loaded yet (the service is not ready: 503)."""


def error_fields(message: str) -> list[str]:
    """The field names a validation message quotes (``feature 'speed': ...`` -> speed)."""
    seen: list[str] = []
    for name in _QUOTED_NAME.findall(message):
        if name not in seen:
            seen.append(name)
    return seen


def parse_request(body: bytes, max_instances: int = DEFAULT_MAX_INSTANCES) -> list[Any]:
    """The ``instances`` of a ``{"instances": [...]}`` request body.

    Raises:
        RequestError: 400 for a body that is not JSON, 422 for a JSON value of
            the wrong shape, 413 for more than ``max_instances`` instances.
    """
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(f"request body is not valid JSON: {e}", status=400) from None
    if not isinstance(document, dict):
        raise RequestError(
            f'expected a JSON object {{"instances": [...]}}, got {type(document).__name__}'
        )
    unexpected = sorted(set(document) - {"instances"})
    if unexpected:
        raise RequestError(
            f"unexpected request fields {unexpected}; only 'instances' is accepted",
            field=unexpected[0],
        )
    if "instances" not in document:
        raise RequestError("'instances' is required", field="instances")
    instances = document["instances"]
    if not isinstance(instances, list):
        raise RequestError(
            f"'instances' must be a list of objects, got {type(instances).__name__}",
            field="instances",
        )
    if not instances:
        raise RequestError("'instances' is empty", field="instances")
    if len(instances) > max_instances:
        raise RequestError(
            f"{len(instances)} instances in one request; the limit is {max_instances}",
            status=413,
            field="instances",
        )
    return instances


def validate_instances(instances: Sequence[Any], config: DatasetConfig) -> list[Record]:
    """Validates every instance as an event of ``config`` (``validate_payload``).

    Raises:
        RequestError: 422 listing each invalid instance with the fields named.
    """
    records: list[Record] = []
    errors: list[dict[str, Any]] = []
    for index, instance in enumerate(instances):
        try:
            record = validate_payload(instance, config, f"request-{index}")
        except RecordError as e:
            errors.append({"index": index, "fields": error_fields(str(e)), "message": str(e)})
            continue
        if record["kind"] != "features":
            errors.append(
                {
                    "index": index,
                    "fields": [config.label.field],
                    "message": f"a label message ({config.label.field!r}) cannot be predicted",
                }
            )
            continue
        records.append(record)
    if errors:
        first = errors[0]
        where = f"instances[{first['index']}]"
        field = f"{where}.{first['fields'][0]}" if first["fields"] else where
        raise RequestError(
            f"{len(errors)} of {len(instances)} instances are invalid; {where}: {first['message']}",
            field=field,
            errors=errors,
        )
    return records


@dataclasses.dataclass(frozen=True)
class Precomputed:
    """One precomputed (batch) prediction for a key."""

    prediction: float
    predicted_label: int | None
    model_version: str
    predicted_at: str | None = None


def prediction_entry(
    config: DatasetConfig,
    record: Record,
    value: float,
    version: str,
    path: str,
    predicted_label: int | None = None,
) -> dict[str, Any]:
    """One element of the response's ``predictions`` list."""
    if predicted_label is None and config.label.task == "binary_classification":
        predicted_label = int(value >= 0.5)
    entry = {
        config.key_field: record["key"],
        "prediction": value,
        "predicted_label": predicted_label,
        "model_version": version,
        "path": path,
    }
    if config.label.join_key:
        entry[config.label.join_key] = record["join_id"]
    return entry


class Predictor:
    """Scores validated records: precomputed for known keys (hybrid), else live.

    Args:
        config: the dataset config.
        model: returns the serving ``(version, predict)``; ``predict`` maps a
            float32 ``(n, dim)`` batch to ``(n, k)`` outputs (``load_predict_fn``).
        lookup: in hybrid mode, a key -> ``Precomputed`` lookup (None: all live).
    """

    def __init__(
        self,
        config: DatasetConfig,
        model: Callable[[], tuple[str | None, Any]],
        lookup: Callable[[str], Precomputed | None] | None = None,
    ):
        self._config = config
        self._model = model
        self._lookup = lookup

    def predict(self, records: Sequence[Record]) -> dict[str, Any]:
        """``{"model_version", "predictions": [...]}`` in the order of ``records``.

        Raises:
            ModelUnavailable: some record needs the live model and none is loaded.
        """
        config = self._config
        entries: list[dict[str, Any] | None] = [None] * len(records)
        live: list[int] = []
        for i, record in enumerate(records):
            hit = self._lookup(record["key"]) if self._lookup is not None else None
            if hit is None:
                live.append(i)
            else:
                entries[i] = prediction_entry(
                    config,
                    record,
                    hit.prediction,
                    hit.model_version,
                    PRECOMPUTED,
                    hit.predicted_label,
                )
        version, predict = self._model()
        if live:
            if predict is None:
                raise ModelUnavailable("no model version is loaded yet")
            batch = encode_batch([records[i]["features"] for i in live], config)
            outputs = np.asarray(predict(batch))
            values = outputs.reshape(len(live), -1)[:, 0]
            for i, value in zip(live, values, strict=True):
                entries[i] = prediction_entry(config, records[i], float(value), version, LIVE)
        return {"model_version": version, "predictions": entries}
