"""A failed router (or mesh) call as an OpenAI-shaped HTTP error. Pure: status names in, status
code, body and headers out; no gRPC here (rpc.py reads the call's status into an `RpcFailure`).

The seed asks for HTTP 503 with Retry-After when the appliance is full; OpenAI's clients retry
429 and 5xx on their own, honouring `retry-after-ms` (exact) and `Retry-After` (whole seconds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# RESOURCE_EXHAUSTED reasons that mean the appliance as a whole is full (the seed's 503): no
# session free, none freed within the queue wait, a dependency's own capacity. Any other reason
# (a tenant's quota, a full queue) is the caller's share: 429.
APPLIANCE_FULL = frozenset({"SESSION_LIMIT", "QUEUE_TIMEOUT", "GUARDRAILS_BUSY", "LLM_CAPACITY"})

# gRPC status name -> (HTTP status, OpenAI error type).
_BY_CODE: dict[str, tuple[int, str]] = {
    "INVALID_ARGUMENT": (400, "invalid_request_error"),
    "OUT_OF_RANGE": (400, "invalid_request_error"),
    "FAILED_PRECONDITION": (400, "invalid_request_error"),
    "UNAUTHENTICATED": (401, "authentication_error"),
    "PERMISSION_DENIED": (403, "permission_error"),
    "NOT_FOUND": (404, "not_found_error"),
    "ALREADY_EXISTS": (409, "invalid_request_error"),
    "ABORTED": (409, "server_error"),
    "CANCELLED": (499, "request_cancelled"),
    "UNIMPLEMENTED": (501, "server_error"),
    "UNAVAILABLE": (503, "server_error"),
    "DEADLINE_EXCEEDED": (504, "timeout_error"),
}


@dataclass(frozen=True)
class RpcFailure:
    """What a failed call said: its status name, message and rich details (each None if absent)."""

    code: str
    message: str
    reason: str | None = None
    retry_after_s: float | None = None
    field: str | None = None


@dataclass(frozen=True)
class HttpFailure:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def openai_param(field_path: str | None) -> str | None:
    """The request field as an OpenAI caller wrote it: the router names sampling fields
    `params.<name>`, which are top-level in OpenAI's request."""
    if not field_path:
        return None
    return field_path.removeprefix("params.")


def retry_headers(seconds: float) -> dict[str, str]:
    """Retry-After in whole seconds (at least 1, as HTTP wants), retry-after-ms exactly."""
    return {
        "Retry-After": str(max(1, math.ceil(seconds))),
        "retry-after-ms": str(max(1, round(seconds * 1000))),
    }


def http_failure(failure: RpcFailure) -> HttpFailure:
    """The HTTP status, OpenAI error body and headers of a failed call."""
    code = failure.reason.lower() if failure.reason else failure.code.lower()
    if failure.code == "RESOURCE_EXHAUSTED":
        full = failure.reason in APPLIANCE_FULL
        status, type_ = (503, "server_error") if full else (429, "rate_limit_error")
    else:
        status, type_ = _BY_CODE.get(failure.code, (500, "server_error"))
    headers: dict[str, str] = {}
    if status in (429, 503):
        headers = retry_headers(failure.retry_after_s if failure.retry_after_s is not None else 1.0)
    return HttpFailure(status, error_body(failure.message, type_, openai_param(failure.field), code), headers)


def bad_request(message: str, param: str | None = None, code: str = "invalid_argument") -> HttpFailure:
    """The gateway's own refusal of a request it cannot carry to the router (malformed JSON, a
    wrong type, an OpenAI feature Forge does not have)."""
    return HttpFailure(400, error_body(message, "invalid_request_error", param, code))


class HttpError(Exception):
    """Raised by a handler to answer with this failure."""

    def __init__(self, failure: HttpFailure) -> None:
        super().__init__(failure.body["error"]["message"])
        self.failure = failure
