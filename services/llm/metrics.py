"""Prometheus metrics of the LLM service."""

from prometheus_client import Counter, Gauge, Histogram

TIME_TO_FIRST_TOKEN = Histogram(
    "forge_llm_time_to_first_token_seconds",
    "From accepting a Generate call to its first text.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
INTER_TOKEN_LATENCY = Histogram(
    "forge_llm_inter_token_latency_seconds",
    "Time between consecutive streamed chunks of one request.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5),
)
PROMPT_TOKENS = Counter("forge_llm_prompt_tokens", "Prompt tokens of accepted requests.")
GENERATED_TOKENS = Counter("forge_llm_generated_tokens", "Tokens generated.")
FINISHED = Counter(
    "forge_llm_requests_finished", "Requests that ran to the end, by finish reason.", ["reason"]
)
ABORTED = Counter(
    "forge_llm_aborted", "Requests aborted in the engine before finishing, by cause.", ["reason"]
)
REJECTED = Counter("forge_llm_rejected", "Requests refused before reaching the engine.", ["reason"])
ACTIVE = Gauge("forge_llm_active_requests", "Generate calls in progress in this service.")
RUNNING = Gauge("forge_llm_engine_running_requests", "Requests the engine is decoding (last engine step).")
WAITING = Gauge("forge_llm_engine_waiting_requests", "Requests waiting in the engine's queue.")
KV_CACHE_USAGE = Gauge("forge_llm_kv_cache_usage_ratio", "Fraction of the KV cache in use (0-1).")
