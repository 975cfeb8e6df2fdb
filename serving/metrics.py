"""Prometheus metrics of the Home ranker, exposed at ``/metrics``.

Each app owns its own ``CollectorRegistry`` (two apps in one process, as in tests, do not
share counts). Names::

    homerec_request_seconds{route}                histogram of request latency per route
    homerec_requests_total{route,status}          requests answered, by HTTP status
    homerec_shelf_seconds{shelf}                  histogram of one shelf's stages 1 + 2
    homerec_fallbacks_total{shelf,reason}         shelves served degraded, by cause
    homerec_missing_feature_rows_total{view}      entity rows the online store had no
                                                  values for (unknown listener, new pair)
    homerec_model_info{shelf,model,version,blessed}  1 for the model serving each shelf
                                                  (blessed: true, false = override, none)
    homerec_feature_log_dropped_total             sampled rows dropped (log queue full)
"""

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Seconds: fine below 100 ms, where the Home page's budget is."""


class ServingMetrics:
    """The ranker's counters and histograms on a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.request_seconds = Histogram(
            "homerec_request_seconds",
            "Request latency by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "homerec_requests",
            "Requests by route and status.",
            ["route", "status"],
            registry=self.registry,
        )
        self.shelf_seconds = Histogram(
            "homerec_shelf_seconds",
            "Time to generate and rank one shelf.",
            ["shelf"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "homerec_fallbacks",
            "Shelves served degraded, by cause.",
            ["shelf", "reason"],
            registry=self.registry,
        )
        self.missing_feature_rows = Counter(
            "homerec_missing_feature_rows",
            "Entity rows without values in the online store.",
            ["view"],
            registry=self.registry,
        )
        self.model_info = Gauge(
            "homerec_model_info",
            "The model serving each shelf (value 1).",
            ["shelf", "model", "version", "blessed"],
            registry=self.registry,
        )
        self._model_labels: list[tuple[str, str, str, str]] = []
        self.feature_log_dropped = Counter(
            "homerec_feature_log_dropped",
            "Sampled feature rows dropped because the log queue was full.",
            registry=self.registry,
        )

    def set_models(self, models: Mapping[str, Any]) -> None:
        """``models``: shelf -> what serves it (``model``, ``version``, ``blessed``
        attributes, a ``ServedBy``); replaces the last set."""
        for labels in self._model_labels:
            self.model_info.remove(*labels)
        self._model_labels = [
            (shelf, s.model, s.version, _blessed_label(s.blessed)) for shelf, s in models.items()
        ]
        for labels in self._model_labels:
            self.model_info.labels(*labels).set(1)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _blessed_label(blessed: bool | None) -> str:
    return "none" if blessed is None else str(blessed).lower()
