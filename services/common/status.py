"""gRPC status for domain errors, with google.rpc details (RetryInfo, ErrorInfo, BadRequest).

Clients read the details with `grpc_status.rpc_status.from_call(call)`.
"""

from __future__ import annotations

import grpc
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc import aio
from grpc_status import rpc_status

from services.common.errors import (
    DeadlineExceeded,
    ForgeError,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

ERROR_DOMAIN = "forge.v1"


def _retry_info(seconds: float) -> error_details_pb2.RetryInfo:
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(seconds * 1e9))
    return error_details_pb2.RetryInfo(retry_delay=delay)


def status_for(error: ForgeError) -> grpc.Status:
    """The status (code, message and packed details) that a domain error becomes on the wire."""
    message = str(error)
    details: list[Message] = []
    code: int
    if isinstance(error, InvalidArgument):
        code = code_pb2.INVALID_ARGUMENT
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=error.field, description=message)
                ]
            )
        )
    elif isinstance(error, ResourceExhausted):
        code = code_pb2.RESOURCE_EXHAUSTED
        details.append(_retry_info(error.retry_after_s))
        details.append(error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN))
    elif isinstance(error, Unavailable):
        code = code_pb2.UNAVAILABLE
        details.append(_retry_info(error.retry_after_s))
        details.append(
            error_details_pb2.ErrorInfo(
                reason="DEPENDENCY_UNAVAILABLE",
                domain=ERROR_DOMAIN,
                metadata={"dependency": error.dependency},
            )
        )
    elif isinstance(error, DeadlineExceeded):
        code = code_pb2.DEADLINE_EXCEEDED
    elif isinstance(error, NotFound):
        code = code_pb2.NOT_FOUND
    elif isinstance(error, Unauthenticated):
        code = code_pb2.UNAUTHENTICATED
    elif isinstance(error, PermissionDenied):
        code = code_pb2.PERMISSION_DENIED
    elif isinstance(error, Internal):
        code = code_pb2.INTERNAL
    else:
        code = code_pb2.INTERNAL
    status = status_pb2.Status(code=code, message=message)
    for detail in details:
        status.details.add().Pack(detail)
    return rpc_status.to_status(status)  # type: ignore[no-any-return]


def retry_details(call: grpc.Call | aio.AioRpcError) -> tuple[float | None, str | None]:
    """The RetryInfo delay (seconds) and ErrorInfo reason of a failed call's rich status, each None
    when absent: what a client of a Forge service (or the router, of another service) acts on."""
    status = rpc_status.from_call(call)
    retry_after: float | None = None
    reason: str | None = None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after = retry.retry_delay.ToNanoseconds() / 1e9
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
    return retry_after, reason


INTERNAL_ERROR_MESSAGE = "internal error; the server log has the details"


def internal_status() -> grpc.Status:
    """What an unexpected exception becomes: INTERNAL without a stack trace, never UNKNOWN."""
    return rpc_status.to_status(  # type: ignore[no-any-return]
        status_pb2.Status(code=code_pb2.INTERNAL, message=INTERNAL_ERROR_MESSAGE)
    )
