"""What a new user gets from `forge up` with no settings: the cpu profile's own engine and model
(llama.cpp, Qwen2.5-Coder-0.5B-Instruct joined from its packages), asked about Forge's own README
with the CLI's defaults. The rest of the suite pins the tiny model (tests/conftest.py); this test
clears that pin, so it is the one that fails if the default answers badly."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.test_forge_up import forge_cli, mesh_env_without, read_until, start_mesh, stop_mesh

TENANT = "readme-reader"


@pytest.fixture
async def default_mesh(tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    env = mesh_env_without("FORGE_LLM_ENGINE", "FORGE_LLM_MODEL")
    # Its own documents: the shared test home keeps the converted models, not this test's README.
    env["FORGE_ROUTER_MILVUS_URI"] = str(tmp_path / "forge.db")
    proc, offset = await start_mesh(env)
    try:
        await read_until(proc, "Forge is up")
        yield {**env, "FORGE_ROUTER": f"127.0.0.1:{50051 + offset}", "FORGE_TENANT": TENANT}
    finally:
        await stop_mesh(proc)


async def ask(env: dict[str, str], question: str) -> dict[str, object]:
    out = await forge_cli("ask", "--json", question, env=env, timeout_s=300)
    answer: dict[str, object] = json.loads(out)
    return answer


@pytest.mark.skipif(sys.platform != "linux", reason="forge up's CPU sets are Linux's")
async def test_readme_questions_answered_by_the_default_model(default_mesh: dict[str, str]) -> None:
    env = default_mesh
    assert "FORGE_LLM_MODEL" not in env and "FORGE_LLM_ENGINE" not in env
    await forge_cli("ingest", "README.md", "docs/", env=env)  # README's own commands
    for question, fact in (
        ("Which port does the router listen on?", "50051"),
        ("How do I run the tests?", "make test"),
    ):
        reply = await ask(env, question)
        answer, summary = str(reply["answer"]), reply["summary"]
        assert isinstance(summary, dict)
        assert str(summary["model"]).startswith("qwen2.5-coder-0.5b"), summary["model"]
        assert fact in answer, f"{question!r} answered {answer!r}"
        sources = [c["document_id"] for c in summary["citations"]]
        assert sources and sources[0] == "README.md", sources
        if any(ch.isdigit() for ch in fact):  # a figure: the summary marks the source that holds it
            used = [c["document_id"] for c in summary["citations"] if c["cited"] or c["matched"]]
            assert used and set(used) == {"README.md"}, summary["citations"]
    assert os.environ.get("FORGE_LLM_MODEL") == "tiny", "the rest of the suite still pins the tiny model"
