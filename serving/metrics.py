"""Prometheus metrics of the prediction service (one registry per service).

Names are fixed; the model version is a label of ``serving_model_info``
(the Prometheus "info" pattern), never part of a name. Endpoint labels are
the service's own routes (anything else is ``other``) so cardinality stays
bounded.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

ENDPOINTS = ("/v1/predict", "/healthz", "/readyz", "/metrics")
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


class ServingMetrics:
    """The service's counters, histogram and gauges."""

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "serving_requests",
            "HTTP requests by endpoint and status code",
            ["endpoint", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "serving_request_latency_seconds",
            "Request latency by endpoint",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.instances = Counter(
            "serving_predictions",
            "Predictions returned, by path (live|precomputed)",
            ["path"],
            registry=r,
        )
        self.invalid = Counter(
            "serving_invalid_instances", "Instances rejected by validation", registry=r
        )
        self.cache_hits = Counter(
            "serving_cache_hits", "Hybrid lookups answered from precomputed predictions", registry=r
        )
        self.cache_misses = Counter(
            "serving_cache_misses", "Hybrid lookups that went live", registry=r
        )
        self.model_info = Gauge(
            "serving_model_info", "1 for the model version being served", ["version"], registry=r
        )
        self.model_loaded = Gauge(
            "serving_model_loaded", "1 when a model version is loaded", registry=r
        )
        self.model_swaps = Counter(
            "serving_model_swaps", "Times the served version changed", registry=r
        )
        self.precomputed_keys = Gauge(
            "serving_precomputed_keys", "Keys with a precomputed prediction", registry=r
        )
        self.refresh_errors = Counter(
            "serving_precomputed_refresh_errors", "Failed reloads of the hybrid table", registry=r
        )
        self.history = Counter(
            "serving_history",
            "Live predictions of a config with history_features, by where the history "
            "values came from (given|found|missing)",
            ["source"],
            registry=r,
        )
        self.history_keys = Gauge(
            "serving_history_keys", "Keys in the per-key history store", registry=r
        )
        self.history_refresh_errors = Counter(
            "serving_history_refresh_errors", "Failed reloads of the per-key history", registry=r
        )
        self._version: str | None = None
        for path in ("live", "precomputed"):
            self.instances.labels(path=path)

    def request(self, path: str, code: int, seconds: float) -> None:
        endpoint = path if path in ENDPOINTS else "other"
        self.requests.labels(endpoint=endpoint, code=str(code)).inc()
        self.latency.labels(endpoint=endpoint).observe(seconds)

    def served(self, paths: Iterable[str]) -> None:
        for path in paths:
            self.instances.labels(path=path).inc()

    def history_sources(self, sources: Iterable[str]) -> None:
        for source in sources:
            self.history.labels(source=source).inc()

    def set_history(self, keys: int, refreshed: bool) -> None:
        self.history_keys.set(keys)
        if not refreshed:
            self.history_refresh_errors.inc()

    def invalid_instances(self, count: int) -> None:
        self.invalid.inc(count)

    def cache_lookup(self, hit: bool) -> None:
        (self.cache_hits if hit else self.cache_misses).inc()

    def set_model(self, version: str | None) -> None:
        if version == self._version:
            return
        if self._version is not None:
            self.model_swaps.inc()
        self.model_info.clear()
        if version is not None:
            self.model_info.labels(version=version).set(1)
        self.model_loaded.set(0 if version is None else 1)
        self._version = version

    def set_precomputed(self, keys: int, refreshed: bool) -> None:
        self.precomputed_keys.set(keys)
        if not refreshed:
            self.refresh_errors.inc()

    def exposition(self) -> tuple[bytes, str]:
        """The metrics in Prometheus text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
