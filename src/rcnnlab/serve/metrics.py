"""The server's Prometheus metrics (`GET /metrics`), in a registry of its own so that two apps
in one process (tests) never share counts."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServeMetrics:
    """Requests and errors by route and status, request latency, images per request and the
    sizes of the batches the model ran."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("rcnnlab_requests", "HTTP requests answered",
                                ["route", "status"], registry=self.registry)
        self.errors = Counter("rcnnlab_errors", "requests answered with a 4xx or 5xx status",
                              ["route", "status"], registry=self.registry)
        self.latency = Histogram("rcnnlab_request_seconds", "time to answer a request",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.images = Counter("rcnnlab_images", "images predicted", registry=self.registry)
        self.batch_size = Histogram("rcnnlab_batch_size", "images in each model call",
                                    buckets=BATCH_BUCKETS, registry=self.registry)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        self.requests.labels(route, str(status)).inc()
        if status >= 400:
            self.errors.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def text(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
