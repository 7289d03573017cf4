"""What the sync and asyncio clients share: settings, defaults and argument handling."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from forge.v1 import router_pb2

from forge_client import _convert
from forge_client._connection import Connection, TlsOption
from forge_client.errors import ForgeError
from forge_client.retry import Retrier, RetryPolicy
from forge_client.types import IngestProgress, Message, Priority


class _Default(enum.Enum):
    TOKEN = 0


DEFAULT = _Default.TOKEN
Timeout = float | None | _Default
Question = str | Sequence[Message | Mapping[str, str]]
ProgressCallback = Callable[[IngestProgress], None]

# Every call has a deadline unless the caller says None: a call to a hung peer must end. It
# covers retries, and the whole of a stream (every document of an ingest, a whole answer).
DEFAULT_TIMEOUT_S = 300.0


class ClientBase:
    def __init__(
        self,
        address: str | None = None,
        *,
        api_key: str | None = None,
        tenant: str | None = None,
        tls: TlsOption = False,
        server_name: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        on_retry: Callable[[ForgeError, int, float], None] | None = None,
    ) -> None:
        self.connection = Connection.resolve(address, api_key, tenant, tls, server_name)
        self.timeout = timeout
        self._retrier = Retrier(retry or RetryPolicy(), on_retry=on_retry)
        self._metadata = self.connection.metadata()
        self._open_channel()

    def _open_channel(self) -> None:
        raise NotImplementedError

    @property
    def address(self) -> str:
        return self.connection.address

    def _timeout(self, timeout: Timeout) -> float | None:
        return self.timeout if isinstance(timeout, _Default) else timeout


@dataclass(frozen=True)
class ChatOptions:
    collection: str = ""
    top_k: int = 0
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: Sequence[str] = ()
    priority: Priority = Priority.INTERACTIVE
    retrieval: bool = True

    def request(self, question: Question) -> router_pb2.ChatRequest:
        return _convert.chat_request(
            question,
            collection=self.collection,
            top_k=self.top_k,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            stop=self.stop,
            priority=self.priority,
            retrieval=self.retrieval,
        )


class IngestTally:
    """The running totals of one ingest call across its attempts."""

    def __init__(self, on_progress: ProgressCallback | None) -> None:
        self.documents = 0
        self.chunks = 0
        self._on_progress = on_progress

    def stored(self, reply: router_pb2.IngestResponse) -> None:
        self.documents += 1
        self.chunks += reply.chunk_count
        if self._on_progress is not None:
            self._on_progress(
                IngestProgress(reply.document_id, reply.chunk_count, self.documents, self.chunks)
            )


def no_summary() -> ForgeError:
    return ForgeError("the chat stream ended without its summary")
