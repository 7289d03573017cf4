"""Prometheus metrics of the router (admission metrics are in admission_metrics.py)."""

from prometheus_client import Counter, Gauge, Histogram

_STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

CHATS = Counter(
    "forge_router_chats",
    "Chat sessions that ended, by outcome (completed, blocked, cancelled, error).",
    ["outcome"],
)
CHAT_SECONDS = Histogram(
    "forge_router_chat_duration_seconds",
    "Admitted chat sessions from admission to the last message, by outcome.",
    ["outcome"],
    buckets=_STAGE_BUCKETS,
)
STAGE_SECONDS = Histogram(
    "forge_router_stage_duration_seconds",
    "Time of one stage of a chat (rail_input, embed_query, search, rail_retrieval, prompt, generate, "
    "rail_output).",
    ["stage"],
    buckets=_STAGE_BUCKETS,
)
DEGRADED = Counter(
    "forge_router_degraded",
    "Chats answered without a failed dependency (retrieval or a fail-open rail), by dependency.",
    ["dependency"],
)
CHUNKS_BLOCKED = Counter(
    "forge_router_retrieval_chunks_blocked", "Retrieved chunks the retrieval rail kept out of the prompt."
)
CHUNKS_DROPPED = Counter(
    "forge_router_retrieval_chunks_dropped", "Retrieved chunks dropped to fit the LLM's context budget."
)
INGESTED_DOCUMENTS = Counter("forge_router_ingested_documents", "Documents stored (new or replaced).")
INGESTED_CHUNKS = Counter("forge_router_ingested_chunks", "Chunks stored.")
DEPENDENCY_REJECTIONS = Counter(
    "forge_router_dependency_rejections",
    "Requests the router built that a dependency rejected as invalid (a router bug: the caller gets "
    "INTERNAL), by dependency.",
    ["dependency"],
)
DEPENDENCY_UP = Gauge(
    "forge_router_dependency_up",
    "1 while a dependency answers SERVING on its grpc.health.v1 (llm: at least one replica), else 0.",
    ["dependency"],
)
STREAMS_ENDED = Counter(
    "forge_router_streams_ended",
    "Streams the router ended because the other side went quiet, by cause (generation_idle: no "
    "token from the LLM; write_stall: the client read nothing; ingest_idle: the client sent nothing).",
    ["cause"],
)
