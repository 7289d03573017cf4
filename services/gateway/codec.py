"""OpenAI's request and response shapes, to and from the router's messages. Field mapping only:
the router checks every value (ranges, limits, roles) and answers INVALID_ARGUMENT naming the
field; here only what the wire cannot carry (a wrong type, an integer beyond int32) or what Forge
does not have (several choices, tools, token arrays) is refused, with 400 naming the field.

Forge's own request fields ride in the body beside OpenAI's (the `openai` client's
`extra_body`): `collection`, `top_k` (chunks to retrieve; not a sampling parameter),
`disable_retrieval` and `priority`. What OpenAI's response has no field for (citations, the
trace id, degraded, a guardrail's verdict) is in an extra top-level object, `forge`.
"""

from __future__ import annotations

import base64
import struct
import time
from typing import Annotated, Any, Literal

from forge.v1 import common_pb2, embed_pb2, router_pb2
from google.protobuf import json_format
from pydantic import BaseModel, Field

from services.gateway.errors import HttpError, bad_request

INT32_MAX = 2**31 - 1
UINT32_MAX = 2**32 - 1
INT64 = 2**63

Int32 = Annotated[int, Field(ge=-(2**31), le=INT32_MAX)]


class TextPart(BaseModel):
    type: str
    text: str | None = None


class MessageIn(BaseModel):
    role: str
    # None: an assistant turn that only called tools (Forge has none; its text is empty).
    content: str | list[TextPart] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model: str
    messages: list[MessageIn]
    max_tokens: Int32 | None = None
    max_completion_tokens: Int32 | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: Annotated[int, Field(ge=-INT64, lt=INT64)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = None
    tools: list[Any] | None = None
    logprobs: bool | None = None
    # Forge's fields (the router's ChatRequest).
    collection: str = ""
    top_k: Annotated[int, Field(ge=0, le=UINT32_MAX)] = 0
    disable_retrieval: bool = False
    priority: Literal["interactive", "batch"] = "interactive"


class EmbeddingsRequest(BaseModel):
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    # Forge's field: asymmetric embedding models encode queries and documents differently.
    input_type: Literal["query", "document"] = "document"


_PRIORITY = {"interactive": common_pb2.PRIORITY_INTERACTIVE, "batch": common_pb2.PRIORITY_BATCH}
# OpenAI's newer name for the system turn.
_ROLES = {"developer": "system"}
_FINISH = {
    common_pb2.FINISH_REASON_STOP: "stop",
    common_pb2.FINISH_REASON_LENGTH: "length",
    common_pb2.FINISH_REASON_BLOCKED: "content_filter",
}
_EMBED_KIND = {"query": embed_pb2.EMBED_KIND_QUERY, "document": embed_pb2.EMBED_KIND_DOCUMENT}


def _content(message: MessageIn, index: int) -> str:
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    texts = []
    for j, part in enumerate(message.content):
        if part.type != "text" or part.text is None:
            raise HttpError(
                bad_request(
                    f"content part type {part.type!r} is not supported; Forge takes text only",
                    f"messages[{index}].content[{j}].type",
                    "unsupported_content",
                )
            )
        texts.append(part.text)
    return "".join(texts)


def _unsupported(body: ChatCompletionRequest) -> None:
    if body.n not in (None, 1):
        raise HttpError(bad_request(f"n must be 1 (Forge answers with one choice), got {body.n}", "n"))
    if body.tools:
        raise HttpError(bad_request("tools are not supported", "tools", "unsupported_parameter"))
    if body.logprobs:
        raise HttpError(bad_request("logprobs are not supported", "logprobs", "unsupported_parameter"))


def chat_request(body: ChatCompletionRequest) -> router_pb2.ChatRequest:
    """The router's ChatRequest for an OpenAI chat completion request."""
    _unsupported(body)
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or ())
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    return router_pb2.ChatRequest(
        messages=[
            common_pb2.ChatMessage(role=_ROLES.get(m.role, m.role), content=_content(m, i))
            for i, m in enumerate(body.messages)
        ],
        collection=body.collection,
        top_k=body.top_k,
        params=common_pb2.SamplingParams(
            max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, stop=stop, seed=body.seed
        ),
        priority=_PRIORITY[body.priority],
        disable_retrieval=body.disable_retrieval,
    )


def finish_reason(summary: router_pb2.ChatSummary) -> str:
    return _FINISH.get(summary.finish_reason, "stop")


def usage(summary: router_pb2.ChatSummary) -> dict[str, int]:
    prompt, completion = summary.usage.prompt_tokens, summary.usage.completion_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def forge_extra(summary: router_pb2.ChatSummary) -> dict[str, Any]:
    """What the router's summary says beyond OpenAI's fields."""
    return {
        "citations": [
            {
                "number": c.number,
                "document_id": c.document_id,
                "chunk_index": c.chunk_index,
                "score": c.score,
                "cited": c.cited,
                "matched": c.matched,
            }
            for c in summary.citations
        ],
        "model": summary.model,
        "trace_id": summary.trace_id,
        "degraded": summary.degraded,
        "degraded_reasons": list(summary.degraded_reasons),
        "verdict": (
            json_format.MessageToDict(summary.verdict, preserving_proto_field_name=True)
            if summary.HasField("verdict")
            else None
        ),
    }


def completion_id(trace_id: str) -> str:
    """The response id names the request's trace, so a caller can find it in the trace viewer."""
    return f"chatcmpl-{trace_id}" if trace_id else f"chatcmpl-{time.time_ns():x}"


def completion(
    model: str, trace_id: str, created: int, text: str, summary: router_pb2.ChatSummary
) -> dict[str, Any]:
    """A non-streamed chat completion."""
    return {
        "id": completion_id(trace_id),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason(summary),
                "logprobs": None,
            }
        ],
        "usage": usage(summary),
        "forge": forge_extra(summary),
    }


def chunk(
    completion_id: str,
    model: str,
    created: int,
    delta: dict[str, str],
    summary: router_pb2.ChatSummary | None = None,
) -> dict[str, Any]:
    """One streamed chunk; the last one (with the summary) has the finish reason, usage and
    `forge`."""
    message: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "delta": delta,
                "finish_reason": finish_reason(summary) if summary is not None else None,
                "logprobs": None,
            }
        ],
    }
    if summary is not None:
        message["usage"] = usage(summary)
        message["forge"] = forge_extra(summary)
    return message


def embed_texts(body: EmbeddingsRequest) -> list[str]:
    if isinstance(body.input, str):
        return [body.input]
    if all(isinstance(item, str) for item in body.input):
        return [str(item) for item in body.input]
    raise HttpError(bad_request("token arrays are not supported; send text", "input", "unsupported_input"))


def embed_kind(body: EmbeddingsRequest) -> embed_pb2.EmbedKind.ValueType:
    return _EMBED_KIND[body.input_type]


def _vector(values: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":  # what the `openai` client asks for by default: little-endian float32
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
    return values


def embeddings(body: EmbeddingsRequest, response: embed_pb2.EmbedResponse) -> dict[str, Any]:
    if body.dimensions is not None and body.dimensions != response.dimension:
        raise HttpError(
            bad_request(
                f"dimensions: the model {response.model} makes {response.dimension}-dimensional "
                f"vectors, got {body.dimensions}",
                "dimensions",
            )
        )
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": _vector(list(e.values), body.encoding_format)}
            for i, e in enumerate(response.embeddings)
        ],
        "model": response.model,
        # The embed service does not count tokens.
        "usage": {"prompt_tokens": 0, "total_tokens": 0},
    }


def models(names: list[str], created: int = 0) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": n, "object": "model", "created": created, "owned_by": "forge"} for n in names],
    }
