"""forge_client's error mapping, fed the statuses the router's own kit builds (status_for), so the
SDK reads exactly what the server packs: ErrorInfo reason, RetryInfo delay, BadRequest field."""

from __future__ import annotations

import grpc
import pytest

from forge_client import errors as sdk
from services.common import errors as domain
from services.common.status import internal_status, status_for


def mapped(error: domain.ForgeError) -> sdk.ForgeError:
    status = status_for(error)
    return sdk.error_from_status(status.code, status.details, status.trailing_metadata)


def test_session_limit_carries_reason_and_retry_delay() -> None:
    err = mapped(domain.ResourceExhausted("SESSION_LIMIT", "all 4 sessions busy", retry_after_s=2.5))
    assert isinstance(err, sdk.ResourceExhausted)
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (err.reason, err.retry_after_s) == ("SESSION_LIMIT", 2.5)
    assert str(err) == "RESOURCE_EXHAUSTED: all 4 sessions busy" and err.message == "all 4 sessions busy"


def test_unavailable_names_the_dependency() -> None:
    err = mapped(domain.Unavailable("embed", "connection refused", retry_after_s=1.0))
    assert isinstance(err, sdk.Unavailable)
    assert err.reason == "DEPENDENCY_UNAVAILABLE" and err.metadata == {"dependency": "embed"}
    assert err.retry_after_s == 1.0 and err.message == "embed unavailable: connection refused"


def test_invalid_argument_names_the_field() -> None:
    err = mapped(domain.InvalidArgument("params.max_tokens", "must be at most 2048"))
    assert isinstance(err, sdk.InvalidArgument)
    assert err.field == "params.max_tokens" and err.retry_after_s is None and err.reason is None


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (domain.Unauthenticated("no API key"), sdk.Unauthenticated),
        (domain.PermissionDenied("tenant beta is not yours"), sdk.PermissionDenied),
        (domain.NotFound("no collection x"), sdk.NotFound),
        (domain.DeadlineExceeded("milvus: no answer within 1.2s"), sdk.DeadlineExceeded),
        (domain.Internal("llm rejected a request the router built"), sdk.Internal),
    ],
)
def test_each_code_has_its_class(error: domain.ForgeError, kind: type[sdk.ForgeError]) -> None:
    err = mapped(error)
    assert type(err) is kind and err.message == str(error) and err.retry_after_s is None


def test_a_status_without_details_and_an_unknown_code() -> None:
    status = internal_status()
    assert type(sdk.error_from_status(status.code, status.details, status.trailing_metadata)) is sdk.Internal
    # gRPC's own refusal (no details) and a code Forge does not use: the base class, code kept.
    plain = sdk.error_from_status(grpc.StatusCode.ABORTED, "aborted", ())
    assert type(plain) is sdk.ForgeError and plain.code == grpc.StatusCode.ABORTED
    assert plain.reason is None and plain.retry_after_s is None
