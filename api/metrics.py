"""The service's Prometheus metrics, one registry per app: request counts and latency by
route, the model's batch sizes, and the index's size (served at /metrics).

Left out: per-collection metrics (label cardinality grows with users' collection names).
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """A registry per app, so several apps (tests) never collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("rag_requests_total", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("rag_request_seconds", "HTTP request latency", ["route"],
                                 registry=self.registry,
                                 buckets=(.002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5))
        self.rate_limited = Counter("rag_rate_limited_total", "requests refused for a key's rate (429)", ["key"],
                                    registry=self.registry)
        self.index_chunks = Gauge("rag_index_chunks", "chunks in the live index", registry=self.registry)
        self.index_documents = Gauge("rag_index_documents", "documents in the live index",
                                     registry=self.registry)
        self.batch_size = Gauge("rag_last_batch_size", "texts (questions, embeddings inputs) in the latest model call",
                                registry=self.registry)
        self.batch_sizes = Histogram("rag_batch_size", "texts per model call", registry=self.registry,
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128))

    def observe_batch(self, size: int) -> None:
        self.batch_size.set(size)
        self.batch_sizes.observe(size)
