"""A failed router call as OpenAI's HTTP error: status, error type and code, param, Retry-After."""

from __future__ import annotations

import pytest

from services.gateway.errors import RpcFailure, http_failure


@pytest.mark.parametrize(
    ("code", "reason", "status", "type_"),
    [
        ("RESOURCE_EXHAUSTED", "SESSION_LIMIT", 503, "server_error"),
        ("RESOURCE_EXHAUSTED", "QUEUE_TIMEOUT", 503, "server_error"),
        ("RESOURCE_EXHAUSTED", "GUARDRAILS_BUSY", 503, "server_error"),
        ("RESOURCE_EXHAUSTED", "TENANT_QUOTA", 429, "rate_limit_error"),
        ("RESOURCE_EXHAUSTED", "QUEUE_FULL", 429, "rate_limit_error"),
        ("RESOURCE_EXHAUSTED", None, 429, "rate_limit_error"),
        ("UNAVAILABLE", "DEPENDENCY_UNAVAILABLE", 503, "server_error"),
        ("INVALID_ARGUMENT", None, 400, "invalid_request_error"),
        ("UNAUTHENTICATED", None, 401, "authentication_error"),
        ("PERMISSION_DENIED", None, 403, "permission_error"),
        ("NOT_FOUND", None, 404, "not_found_error"),
        ("DEADLINE_EXCEEDED", None, 504, "timeout_error"),
        ("INTERNAL", None, 500, "server_error"),
        ("UNKNOWN", None, 500, "server_error"),
    ],
)
def test_status_and_type_by_code_and_reason(code: str, reason: str | None, status: int, type_: str) -> None:
    failure = http_failure(RpcFailure(code, "why", reason, 2.0 if reason else None))
    assert failure.status == status
    error = failure.body["error"]
    assert error["type"] == type_
    assert error["message"] == "why"
    # The ErrorInfo reason is the code clients can switch on; without one, the gRPC code.
    assert error["code"] == (reason or code).lower()


def test_overload_carries_retry_after_from_retry_info() -> None:
    failure = http_failure(RpcFailure("RESOURCE_EXHAUSTED", "full", "SESSION_LIMIT", 2.4))
    assert failure.headers == {"Retry-After": "3", "retry-after-ms": "2400"}
    quota = http_failure(RpcFailure("RESOURCE_EXHAUSTED", "quota", "TENANT_QUOTA", 0.2))
    assert quota.headers == {"Retry-After": "1", "retry-after-ms": "200"}  # at least a whole second


def test_overload_without_retry_info_still_says_when_to_retry() -> None:
    assert http_failure(RpcFailure("UNAVAILABLE", "router down")).headers["Retry-After"] == "1"


def test_client_errors_carry_no_retry_after() -> None:
    assert http_failure(RpcFailure("INVALID_ARGUMENT", "bad")).headers == {}
    assert http_failure(RpcFailure("UNAUTHENTICATED", "no key")).headers == {}


def test_param_is_the_openai_field_name() -> None:
    failure = http_failure(
        RpcFailure("INVALID_ARGUMENT", "params.max_tokens: too many", field="params.max_tokens")
    )
    assert failure.body["error"]["param"] == "max_tokens"
    turn = http_failure(RpcFailure("INVALID_ARGUMENT", "empty", field="messages[1].content"))
    assert turn.body["error"]["param"] == "messages[1].content"
    assert http_failure(RpcFailure("INTERNAL", "oops")).body["error"]["param"] is None
