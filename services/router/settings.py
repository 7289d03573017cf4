"""Router settings (environment: FORGE_ROUTER_<NAME>)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.settings import DEFAULT_GRPC_PORTS

# The services the router calls and watches (Milvus is opened, not watched).
DEPENDENCIES = ("llm", "embed", "guardrails")


def _names(spec: str) -> list[str]:
    return [n.strip() for n in spec.split(",") if n.strip()]


def _local(service: str) -> str:
    return f"127.0.0.1:{DEFAULT_GRPC_PORTS[service]}"


class RouterSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FORGE_ROUTER_", extra="forbid")

    # Downstream services (host:port). `forge up` sets them to the ports it started.
    llm_address: str = _local("llm")
    # Several LLM replicas, comma-separated host:port or dns:///name:port (a headless Service);
    # when set it replaces llm_address. Sessions go to the least-loaded replica that is up.
    llm_addresses: str = ""
    # A replica that failed before its first token is skipped this long.
    llm_replica_cooldown_s: Annotated[float, Field(gt=0)] = 5.0
    embed_address: str = _local("embed")
    guardrails_address: str = _local("guardrails")
    # Readiness: the router reports NOT_SERVING (and answers UNAVAILABLE naming what it waits for)
    # until each of these has answered SERVING on its grpc.health.v1 and Milvus is open. Comma-
    # separated, of llm, embed, guardrails; guardrails counts only when guardrails_enabled. Leave
    # one out only where the router may serve without it (degrade rules say what it then does).
    readiness_dependencies: str = "llm,embed,guardrails"
    # Milvus: a local path ending in .db = Milvus Lite owned by this process
    # ("" = FORGE_HOME/milvus/forge.db), or a server / cluster URI such as http://milvus:19530.
    milvus_uri: str = ""
    milvus_token: str = ""
    # FLAT is exact and the only sensible choice in Lite; a server can use AUTOINDEX or HNSW.
    milvus_index_type: str = "FLAT"
    # Milvus server only: leftovers of a write that was killed before its commit (invisible to
    # readers) are removed by a later write of the document once older than this, so a write in
    # flight on another router is never cut; 0 = this router is the server's only writer (removed
    # at once). Lite has one writer by construction.
    milvus_writer_grace_s: Annotated[float, Field(ge=0)] = 3600.0
    # Each call of an ingest, delete or listing (embedding a batch, a Milvus write) made without a
    # caller deadline is still bounded by this; with one, it gets what is left of it. Generous: a
    # batch of 64 chunks queued behind others on a busy 2-core CPU takes tens of seconds.
    call_timeout_s: Annotated[float, Field(gt=0)] = 120.0
    default_collection: str = "default"
    # Vector size of the embeddings model; checked against the embed service at start when it answers.
    embedding_dimension: Annotated[int, Field(ge=1)] = 384

    # Shared admission (several router replicas, one session limit): redis://host:port/db, or
    # rediss:// with TLS; "" = this router counts its own sessions (one replica). With a URL the
    # limit and the per-tenant quota are global, across every replica.
    admission_url: str = ""
    # The session limit this router enforces; 0 = the profile's admission.max_sessions (what ONE
    # LLM replica's slice holds). With several LLM replicas behind shared admission it is their
    # total capacity (the Kubernetes overlays set max_sessions x LLM replicas).
    admission_max_sessions: Annotated[int, Field(ge=0)] = 0
    # Routers sharing the limit. Redis unreachable: each admits max_sessions // replicas (the
    # larger of this and the replicas last seen in Redis) on its own until Redis answers.
    admission_replicas: Annotated[int, Field(ge=1)] = 1
    # A session's lease; renewed every third of it. A router that dies frees its slots within it.
    admission_lease_ttl_s: Annotated[float, Field(ge=1)] = 10.0
    # Keys in Redis: one prefix per pool of routers that share a limit.
    admission_key_prefix: str = "forge:admission"
    # This replica's name in GetCapacity and in its lease ids ("" = host name and process id; the
    # pod's name on Kubernetes).
    replica_id: str = ""

    # Retrieval.
    default_top_k: Annotated[int, Field(ge=1)] = 4
    max_top_k: Annotated[int, Field(ge=1)] = 32
    # fail = UNAVAILABLE naming the dependency; degrade = answer without context, summary says degraded.
    on_retrieval_failure: Literal["fail", "degrade"] = "degrade"
    # Guardrails: fail closed (UNAVAILABLE) or open (answer unchecked, summary says degraded).
    on_guardrails_failure: Literal["fail", "degrade"] = "fail"
    guardrails_enabled: bool = True

    # Generation defaults and limits.
    default_max_tokens: Annotated[int, Field(ge=1)] = 256
    # Temperature of a chat that does not set one: greedy, so the same question over the same
    # documents gets the same answer, copied from its sources (the engines' own default is 1.0,
    # which made the answer eval's small models ramble and invent; bench/answer_eval.py).
    default_temperature: Annotated[float, Field(ge=0, le=2)] = 0.0
    max_messages: Annotated[int, Field(ge=1)] = 64
    max_message_chars: Annotated[int, Field(ge=1)] = 16384
    # All messages together: with the context documents the prompt stays within what the LLM
    # service accepts (its max_input_chars, 65536 by default), so the caller hears the limit.
    max_conversation_chars: Annotated[int, Field(ge=1)] = 16384
    # The instruction of a grounded chat (retrieval on); the numbered sources follow it, in the
    # system message or the question's turn depending on the model family. Unset = the family's
    # own (services/router/prompt.py: GROUNDED_INSTRUCTION, or the one it was measured to follow).
    system_prompt: str | None = None
    # The instruction of a chat without retrieval (disable_retrieval).
    plain_system_prompt: str = "You are a helpful assistant."
    # Where the numbered sources go: auto = by the served model's family (services/router/prompt.py);
    # system = in the system message; user = in the question's turn (templates without a system role).
    prompt_style: Literal["auto", "system", "user"] = "auto"
    # Output rail: text is released in segments ending at a sentence or line break; a segment is
    # cut at this many characters when no break comes.
    output_segment_chars: Annotated[int, Field(ge=16)] = 320
    # The output rail's view across segments: each check sees this many released characters
    # before the new text, and as many at the end are held back until what follows was checked.
    output_window_chars: Annotated[int, Field(ge=0, le=4096)] = 96
    # Caller messages checked by the input rail at once (every one is checked).
    input_rail_concurrency: Annotated[int, Field(ge=1, le=64)] = 4

    # Share of the caller's remaining deadline each stage before generation may use; the LLM gets
    # whatever is left. Without a caller deadline, each stage gets its cap.
    pre_generation_deadline_share: Annotated[float, Field(gt=0, lt=1)] = 0.3
    stage_timeout_cap_s: Annotated[float, Field(gt=0)] = 10.0
    # Generation without a caller deadline is still bounded.
    generation_timeout_s: Annotated[float, Field(gt=0)] = 600.0
    # A generation that streams no token for this long (the first one included: prefill and any
    # queueing in the LLM) is aborted: UNAVAILABLE "llm unavailable: no token for ...". An LLM
    # frozen mid-answer then holds a chat and its session slot this long, not the total above.
    generation_idle_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    # A client that stops reading: each message the router streams (a Chat's answer, an Ingest's
    # progress) must be taken by the transport within this, else the call ends (DEADLINE_EXCEEDED)
    # and its session or stream slot is freed. Small answers fit the transport's buffers and never
    # wait; a client that vanished is also dropped by keepalive (about 40 s).
    stream_write_timeout_s: Annotated[float, Field(gt=0)] = 30.0

    # Ingestion.
    chunk_max_tokens: Annotated[int, Field(ge=16, le=256)] = 200
    chunk_overlap_tokens: Annotated[int, Field(ge=0)] = 32
    # Characters per chunk whatever its token count (a run read as one token can be any length);
    # at most the embed service's FORGE_EMBED_MAX_CHARS_PER_TEXT (8192).
    chunk_max_chars: Annotated[int, Field(ge=16)] = 4096
    # Caps on what one caller may send (issue 12): each refusal is INVALID_ARGUMENT naming the
    # field and the limit, or RESOURCE_EXHAUSTED (with RetryInfo and an ErrorInfo reason) for a
    # count of things held at once. All are checked before any chunking, embedding or Milvus call.
    # A document's text, in characters (what chunking and embedding cost grows with): 2 M is a
    # long book; its bytes are bounded by the transport's 16 MiB message limit.
    max_document_chars: Annotated[int, Field(ge=1)] = 2_000_000
    max_document_id_chars: Annotated[int, Field(ge=1, le=512)] = 256
    # Metadata is copied into every chunk's row, so it is kept small: 32 entries (source, title,
    # author, tags... with room to spare); a key is a name, 256 bytes; keys and values together
    # 8 KiB per document (a 2 M-character document is thousands of chunks, each carrying it; and
    # well under Milvus' 64 KiB cap on a JSON value even after JSON escaping).
    max_metadata_entries: Annotated[int, Field(ge=0)] = 32
    max_metadata_key_bytes: Annotated[int, Field(ge=1)] = 256
    max_metadata_bytes: Annotated[int, Field(ge=1)] = 8192
    # Documents in one Ingest stream: a stream holds one of its tenant's stream slots, so it is
    # bounded like everything else; a bulk load sends its documents in several streams.
    max_documents_per_stream: Annotated[int, Field(ge=1)] = 10_000
    # Ingest streams one tenant may have open on this router at once; beyond it RESOURCE_EXHAUSTED
    # (INGEST_STREAMS). Embedding is shared by all streams (embed_batches_in_flight), so more
    # streams add no speed, only chunking threads and documents held in memory (up to 16 MiB each).
    max_ingest_streams_per_tenant: Annotated[int, Field(ge=1)] = 4
    # An Ingest stream whose client sends no message for this long is ended (DEADLINE_EXCEEDED)
    # and its stream slot freed; the time the router spends on a document does not count.
    ingest_idle_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    # Collections one tenant may hold chunks in, the default collection included (what
    # ListCollections shows it): each is a Milvus collection with its own index and memory, and
    # listing counts in every one of them. An Ingest into a new collection beyond it gets
    # RESOURCE_EXHAUSTED (COLLECTION_LIMIT); deleting a collection's documents frees its place.
    max_collections_per_tenant: Annotated[int, Field(ge=1)] = 16
    # Document ids per DeleteDocuments: 1,000 ids are two Milvus rounds of query, count and delete;
    # 200,000 took 7.5 s of router time before this cap.
    max_delete_ids: Annotated[int, Field(ge=1)] = 1000
    embed_batch_size: Annotated[int, Field(ge=1, le=256)] = 64
    # The embed service batches across requests too: two batches in flight keep it busy (one
    # computing, one queued) without a batch's wait eating its timeout.
    embed_batches_in_flight: Annotated[int, Field(ge=1, le=64)] = 2

    @field_validator("readiness_dependencies")
    @classmethod
    def _known_dependencies(cls, value: str) -> str:
        unknown = [n for n in _names(value) if n not in DEPENDENCIES]
        if unknown:
            raise ValueError(f"unknown dependencies {unknown}: each must be one of {', '.join(DEPENDENCIES)}")
        return value

    def watched_dependencies(self) -> tuple[str, ...]:
        """The services the router calls, each watched for its health."""
        return tuple(d for d in DEPENDENCIES if d != "guardrails" or self.guardrails_enabled)

    def required_dependencies(self) -> tuple[str, ...]:
        """The services that must be SERVING before the router is."""
        wanted = set(_names(self.readiness_dependencies))
        return tuple(d for d in self.watched_dependencies() if d in wanted)
