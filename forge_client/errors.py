"""One exception hierarchy for every failed call: the status code, the server's message and the
google.rpc details Forge attaches (ErrorInfo reason, RetryInfo delay, BadRequest field)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc import aio

STATUS_DETAILS_KEY = "grpc-status-details-bin"


class ForgeError(Exception):
    """A call that failed. `reason` is the ErrorInfo reason (SESSION_LIMIT, TENANT_QUOTA,
    QUEUE_FULL, DEPENDENCY_UNAVAILABLE, ...), `retry_after_s` the server's RetryInfo delay, each
    None when the server sent none. `str(error)` is "CODE: message"."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str | None = None,
        retry_after_s: float | None = None,
        metadata: Mapping[str, str] | None = None,
        field: str | None = None,
    ) -> None:
        if code is not None:
            self.code = code
        super().__init__(f"{self.code.name}: {message}")
        self.message = message
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.metadata: Mapping[str, str] = dict(metadata or {})
        self.field = field


class InvalidArgument(ForgeError):
    """The request broke a rule; `field` names the offending field. Never retried."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class Unauthenticated(ForgeError):
    """No API key, or one the router does not accept (unknown, malformed, revoked)."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ForgeError):
    """A valid key asking for what it may not do (another tenant, an admin call)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class NotFound(ForgeError):
    code = grpc.StatusCode.NOT_FOUND


class ResourceExhausted(ForgeError):
    """Overload (the session limit, a tenant quota, a full queue): retry after `retry_after_s`."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ForgeError):
    """The router, or a dependency it names, cannot serve now."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ForgeError):
    """The call's deadline passed (retries included) before it finished."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(ForgeError):
    code = grpc.StatusCode.CANCELLED


class Internal(ForgeError):
    """The server's own fault; its log has the details."""

    code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[ForgeError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        Unauthenticated,
        PermissionDenied,
        NotFound,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
        Cancelled,
        Internal,
    )
}


def error_from_status(
    code: grpc.StatusCode, message: str, trailing_metadata: Iterable[tuple[str, str | bytes]] = ()
) -> ForgeError:
    """The exception for a status, with the details packed in its trailing metadata."""
    reason: str | None = None
    retry_after: float | None = None
    field: str | None = None
    info: dict[str, str] = {}
    for key, value in trailing_metadata:
        if key != STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_after = retry.retry_delay.ToNanoseconds() / 1e9
            elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                error_info = error_details_pb2.ErrorInfo()
                detail.Unpack(error_info)
                reason, info = error_info.reason, dict(error_info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                if bad.field_violations:
                    field = bad.field_violations[0].field
    cls = _BY_CODE.get(code, ForgeError)
    return cls(
        message,
        code=code,
        reason=reason,
        retry_after_s=retry_after,
        metadata=info,
        field=field,
    )


def from_rpc_error(err: grpc.RpcError) -> ForgeError:
    """A failed call (sync or asyncio) as a ForgeError (raise it `from` the gRPC error: that
    stays its __cause__)."""
    if not isinstance(err, grpc.Call | aio.AioRpcError):
        return ForgeError(str(err))
    code = err.code() or grpc.StatusCode.UNKNOWN
    trailing = err.trailing_metadata() or ()
    return error_from_status(code, err.details() or "", trailing)
