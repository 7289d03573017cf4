"""`forge ask` reads the SDK's summary through services/cli/client.AskSummary, shaped as the
protobuf it replaced: HasField("verdict") and an empty verdict when no rail blocked."""

from __future__ import annotations

from pathlib import Path

import pytest

from forge_client import ChatSummary, Citation, FinishReason, Usage, Verdict
from services.cli import client


def test_ask_summary_reads_as_the_protobuf_did() -> None:
    plain = client.AskSummary(ChatSummary((Citation("a.md", 0, 0.9),), Usage(5, 7), "t" * 32))
    assert not plain.HasField("verdict") and plain.verdict.message == ""
    assert plain.citations[0].document_id == "a.md" and plain.usage.completion_tokens == 7
    assert plain.trace_id == "t" * 32 and not plain.degraded and plain.degraded_reasons == ()
    blocked = client.AskSummary(
        ChatSummary(finish_reason=FinishReason.BLOCKED, verdict=Verdict("block", "input", "not allowed"))
    )
    assert blocked.HasField("verdict") and blocked.verdict.message == "not allowed"


def test_a_missing_path_is_a_client_error(tmp_path: Path) -> None:
    with pytest.raises(client.ClientError, match="no such file or folder"):
        client.documents_in([tmp_path / "absent"])
