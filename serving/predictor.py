"""Pure request handling of the prediction service: parse, validate, route, predict.

Nothing here knows HTTP. ``parse_request`` turns a request body into
instances, ``validate_instances`` runs every instance through the pipeline's
own validation (``transforms.validation.validate_payload``: the same checks a
Pub/Sub event passes), and ``Predictor`` scores the valid records with the
same feature function (``model.features.encode_batch``) and the same loaded
model function (``model.handler.load_predict_fn``, held by a ``HotSwapModel``)
as ``RunInference`` in the streaming pipeline, so the service, the pipeline
and the batch job give the same score for the same event.

With ``history_features``, each live record's history values come from the
instance itself when it carries them (all of them, each a number or null:
the caller computed them) or else from a per-key history lookup
(``serving.history.KeyHistory``); each prediction then says where they came
from (``"history": "given" | "found" | "missing"``; missing values are
encoded as ``model.history.history_default``).

Client mistakes raise ``RequestError`` (a 4xx, with the offending field
named); anything else is the service's own fault.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from dataset.config import DatasetConfig
from model.features import encode_batch, model_inputs
from transforms.validation import Record, RecordError, validate_payload

LIVE = "live"
PRECOMPUTED = "precomputed"
HISTORY_GIVEN = "given"
HISTORY_FOUND = "found"
HISTORY_MISSING = "missing"
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


def split_history(instance: Any, config: DatasetConfig) -> tuple[Any, dict[str, Any] | None]:
    """An instance without its history feature fields, and their values (None: not given).

    An instance may carry the config's history feature values (computed by the
    caller): then it must carry all of them, each a finite number or null.

    Raises:
        RecordError: for some but not all of them, or a value of another type.
    """
    names = [spec.name for spec in config.history_features]
    if not isinstance(instance, dict) or not any(name in instance for name in names):
        return instance, None
    absent = [name for name in names if name not in instance]
    if absent:
        raise RecordError(
            f"history features {absent} are missing: give all of {names} (null for no "
            "history) or none (the service then looks them up by key)"
        )
    given: dict[str, Any] = {}
    for name in names:
        value = instance[name]
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise RecordError(
                f"history feature {name!r}: expected a finite number or null, got {value!r}"
            )
        given[name] = None if value is None else float(value)
    return {k: v for k, v in instance.items() if k not in given}, given


def validate_instances(instances: Sequence[Any], config: DatasetConfig) -> list[Record]:
    """Validates every instance as an event of ``config`` (``validate_payload``).

    History feature values an instance carries (``split_history``) land in
    the record's ``history``.

    Raises:
        RequestError: 422 listing each invalid instance with the fields named.
    """
    records: list[Record] = []
    errors: list[dict[str, Any]] = []
    for index, instance in enumerate(instances):
        try:
            payload, given = split_history(instance, config)
            record = validate_payload(payload, config, f"request-{index}")
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
        if given is not None:
            record["history"] = given
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
        history: with ``history_features``, ``(key, event_time)`` -> the
            record's history values, or None when the key has none
            (``KeyHistory.lookup``); None: values not given are missing.
    """

    def __init__(
        self,
        config: DatasetConfig,
        model: Callable[[], tuple[str | None, Any]],
        lookup: Callable[[str], Precomputed | None] | None = None,
        history: Callable[[str, float], dict[str, Any] | None] | None = None,
    ):
        self._config = config
        self._model = model
        self._lookup = lookup
        self._history = history

    def _with_history(self, record: Record) -> tuple[Record, str]:
        """The record with its history values, and where they came from."""
        if "history" in record:
            return record, HISTORY_GIVEN
        found = None
        if self._history is not None:
            found = self._history(record["key"], record["event_time"])
        if found is None:
            missing = {spec.name: None for spec in self._config.history_features}
            return {**record, "history": missing}, HISTORY_MISSING
        return {**record, "history": found}, HISTORY_FOUND

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
            inputs, sources = [], []
            for i in live:
                record, source = records[i], None
                if config.history_features:
                    record, source = self._with_history(record)
                inputs.append(model_inputs(record))
                sources.append(source)
            outputs = np.asarray(predict(encode_batch(inputs, config)))
            values = outputs.reshape(len(live), -1)[:, 0]
            for i, value, source in zip(live, values, sources, strict=True):
                entries[i] = prediction_entry(config, records[i], float(value), version, LIVE)
                if source is not None:
                    entries[i]["history"] = source
        return {"model_version": version, "predictions": entries}
