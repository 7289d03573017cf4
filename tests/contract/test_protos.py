"""The API contract: generated code in step with the .proto files, buf-clean, fixed names kept."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor
from google.protobuf.message import Message

from tests.helpers import REPO_ROOT

GEN = REPO_ROOT / "gen"


def buf() -> str:
    found = shutil.which("buf") or shutil.which("buf", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("buf not found: install the dev extra (buf-bin)")
    return found


def relative_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def test_generated_code_is_in_step_with_the_protos(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "gen_protos.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    assert relative_files(tmp_path) == relative_files(GEN), "run: python tools/gen_protos.py"
    stale = [f for f in sorted(relative_files(GEN)) if not filecmp.cmp(GEN / f, tmp_path / f, shallow=False)]
    assert not stale, f"generated code out of step with protos/ (run python tools/gen_protos.py): {stale}"


def test_buf_lint_standard() -> None:
    result = subprocess.run([buf(), "lint"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_format_clean() -> None:
    result = subprocess.run(
        [buf(), "format", "--diff", "--exit-code"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, "buf format -w fixes:\n" + result.stdout


def method(service: descriptor.ServiceDescriptor, name: str) -> descriptor.MethodDescriptor:
    found = service.methods_by_name.get(name)
    assert found is not None, f"{service.full_name}.{name} is part of the fixed API"
    return found


def test_fixed_rpc_names_and_streaming_shapes() -> None:
    from forge.v1 import embed_pb2, guardrails_pb2, llm_pb2, ops_pb2, router_pb2

    expected = {
        (embed_pb2, "EmbedService"): {"Embed": (False, False)},
        (llm_pb2, "LlmService"): {
            "Generate": (False, True),
            "Tokenize": (False, False),
            "GetModelInfo": (False, False),
        },
        (guardrails_pb2, "GuardrailsService"): {"Check": (False, False)},
        (router_pb2, "RouterService"): {
            "Chat": (False, True),
            "Search": (False, False),
            "Ingest": (True, True),
            "DeleteDocuments": (False, False),
            "ListCollections": (False, False),
        },
        (router_pb2, "AdminService"): {"GetCapacity": (False, False), "GetGpuStats": (False, False)},
        (ops_pb2, "OpsService"): {"GetGpuStats": (False, False), "GetInfo": (False, False)},
    }
    for (module, service_name), methods in expected.items():
        service = module.DESCRIPTOR.services_by_name[service_name]
        assert service.full_name == f"forge.v1.{service_name}"
        for name, (client_streams, server_streams) in methods.items():
            m = method(service, name)
            assert (m.client_streaming, m.server_streaming) == (client_streams, server_streams), m.full_name


def test_design_field_names_exist() -> None:
    from forge.v1 import common_pb2, embed_pb2, guardrails_pb2, llm_pb2, router_pb2

    fields: dict[type[Message], set[str]] = {
        embed_pb2.EmbedRequest: {"texts", "kind", "normalize"},
        embed_pb2.EmbedResponse: {"embeddings", "dimension", "model"},
        llm_pb2.GenerateRequest: {"messages", "prompt", "params", "request_id", "priority"},
        llm_pb2.GenerateResponse: {"text", "finish_reason", "usage"},
        common_pb2.SamplingParams: {"max_tokens", "temperature", "top_p", "top_k", "stop", "seed"},
        common_pb2.Usage: {"prompt_tokens", "completion_tokens"},
        guardrails_pb2.CheckRequest: {"text", "stage"},
        guardrails_pb2.CheckResponse: {"decision", "findings", "redacted_text"},
        guardrails_pb2.Finding: {"rail", "category", "score", "start", "end"},
        router_pb2.ChatRequest: {"messages", "collection", "top_k", "params", "priority"},
        router_pb2.ChatSummary: {"citations", "usage", "trace_id", "degraded", "verdict"},
        router_pb2.SearchRequest: {"query", "collection", "top_k"},
        router_pb2.SearchHit: {"document_id", "chunk_index", "score", "text"},
        router_pb2.Document: {"id", "text", "metadata"},
    }
    for message, names in fields.items():
        assert names <= set(message.DESCRIPTOR.fields_by_name), message.DESCRIPTOR.full_name
