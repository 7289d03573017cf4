"""Prometheus metrics of the embeddings service."""

from prometheus_client import Counter, Gauge, Histogram

BATCH_SIZE = Histogram(
    "forge_embed_batch_size",
    "Texts per model call (how well concurrent requests were merged).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
BATCH_SECONDS = Histogram(
    "forge_embed_batch_duration_seconds",
    "Time of one model call.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
QUEUE_WAIT_SECONDS = Histogram(
    "forge_embed_queue_wait_seconds",
    "Time a request waited before its batch started.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
QUEUED_TEXTS = Gauge("forge_embed_queued_texts", "Texts waiting for the model.")
TEXTS = Counter("forge_embed_texts", "Texts embedded.", ["kind"])
REJECTED = Counter("forge_embed_rejected", "Requests refused before reaching the model.", ["reason"])
