"""Domain errors: what went wrong, in words a caller can act on. No gRPC here.

The server kit's error interceptor maps each to one status code (see `status.py`), so domain
code raises these and never builds gRPC statuses itself.
"""

from __future__ import annotations


class ForgeError(Exception):
    """Base of every error meant for the caller; anything else is an internal error."""


class InvalidArgument(ForgeError):
    """Bad input. `field` names the offending request field; the message states the limit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class ResourceExhausted(ForgeError):
    """Overload: the caller should retry after `retry_after_s`. `reason` is a stable code such as
    SESSION_LIMIT, TENANT_QUOTA, QUEUE_FULL or QUEUE_TIMEOUT."""

    def __init__(self, reason: str, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after_s = retry_after_s


class Unavailable(ForgeError):
    """A dependency (a model, another service, Milvus) cannot serve now."""

    def __init__(self, dependency: str, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(f"{dependency} unavailable: {message}")
        self.dependency = dependency
        self.retry_after_s = retry_after_s


class DeadlineExceeded(ForgeError):
    """The caller's deadline passed before the work finished."""


class NotFound(ForgeError):
    """A named thing (collection, document) does not exist."""


class Internal(ForgeError):
    """This server's own fault, said in words (e.g. a dependency rejected a request this server
    built): INTERNAL, never blamed on the caller's input."""


class Unauthenticated(ForgeError):
    """No API key, or one that is not valid (unknown, malformed, revoked)."""


class PermissionDenied(ForgeError):
    """A valid key asking for what it may not do (another tenant, an admin RPC)."""
