"""The OpenAI-compatible HTTP front on the real mesh in this process (real embeddings and vLLM
services, Milvus Lite, a router with API keys on, real gRPC), driven by the real `openai` client
and by curl: chat with and without streaming (citations in `forge`), embeddings, models, the GPU
ledger for admins only, and every refusal the router makes as OpenAI's error with the right
status (a bad key 401, bad input 400 naming the field, a tenant over its quota 429 and a full
appliance 503, both with Retry-After). The last test runs `forge serve gateway` as a process."""

from __future__ import annotations

import asyncio
import json
import math
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from forge.v1 import router_pb2, router_pb2_grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client import REGISTRY

from services.common.config import AdmissionConfig, load_profile
from services.common.credentials import ServerSecurity
from services.common.security.keys import KeyRing, KeyStore
from services.common.server import ForgeServer, ServerOptions
from services.gateway.app import GatewayApp
from services.gateway.settings import GatewaySettings
from services.router.app import RouterApp
from services.router.settings import RouterSettings
from tests.helpers import ServiceProcess, bearer, free_port, serving
from tests.integration.test_router import COUNTING, DOCUMENTS, poll

pytestmark = pytest.mark.slow
MODEL = "forge"  # any name is accepted; the answer says which model served it
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@dataclass
class Front:
    base_url: str
    router: ForgeServer
    admin_key: str
    acme_key: str
    beta_key: str
    llm_model: str

    def client(self, key: str, **options: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=key, max_retries=0, **options)

    async def capacity(self) -> router_pb2.GetCapacityResponse:
        async with aio.insecure_channel(self.router.address) as channel:
            admin = router_pb2_grpc.AdminServiceStub(channel)
            return await admin.GetCapacity(router_pb2.GetCapacityRequest(), metadata=bearer(self.admin_key))

    async def idle(self) -> None:
        """No chat holds a session (the router frees a slot just after its last message)."""

        async def no_sessions() -> bool:
            return (await self.capacity()).active_sessions == 0

        await poll(no_sessions, "the router's sessions to be free")


@pytest.fixture(scope="module")
async def front(
    embed_server: ForgeServer, llm_server: ForgeServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Front]:
    home = tmp_path_factory.mktemp("gateway-home")
    keys = KeyStore(home / "keys" / "keys.yaml")
    admin_key, acme_key, beta_key = keys.create("ops", "admin"), keys.create("acme"), keys.create("beta")
    # Two sessions, one per tenant: a second chat of one tenant is over its quota, a third chat
    # finds the appliance full.
    profile = load_profile("cpu", environ={}).model_copy(
        update={"admission": AdmissionConfig(max_sessions=2, max_sessions_per_tenant=1)}
    )
    router_settings = RouterSettings(
        llm_address=llm_server.address,
        embed_address=embed_server.address,
        guardrails_address=f"127.0.0.1:{free_port()}",
        guardrails_enabled=False,  # not the subject here; keeps the mesh small
        # Text is released every few tokens, so a held stream's first chunk comes at once.
        output_segment_chars=16,
        output_window_chars=0,
    )
    router = ForgeServer(
        RouterApp(profile, home, router_settings),
        profile,
        ServerOptions(port=0, security=ServerSecurity(keys=KeyRing(keys.path), auth="keys")),
    )
    await router.start()
    try:
        await router.load_and_serve()
        gateway = GatewayApp(
            GatewaySettings(
                http_port=0,
                router_address=router.address,
                embed_address=embed_server.address,
                llm_address=llm_server.address,
            )
        )
        async with serving(gateway), aio.insecure_channel(router.address) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            requests = [
                router_pb2.IngestRequest(document=router_pb2.Document(id=i, text=t))
                for i, t in DOCUMENTS.items()
            ]
            replies = [r async for r in stub.Ingest(iter(requests), metadata=bearer(acme_key), timeout=120)]
            assert replies[-1].documents_ingested == len(DOCUMENTS)
            llm_model = llm_server.app.settings_summary()["model"]
            yield Front(f"{gateway.http_address}/v1", router, admin_key, acme_key, beta_key, llm_model)
    finally:
        await router.stop()


def cancelled_chats() -> float:
    """Chats the (in-process) router ended as cancelled: its caller went away mid-answer."""
    return REGISTRY.get_sample_value("forge_router_chats_total", {"outcome": "cancelled"}) or 0.0


def question(text: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


async def test_models_lists_the_llm_and_the_embedding_model(front: Front) -> None:
    models = await front.client(front.acme_key).models.list()
    ids = [m.id for m in models.data]
    assert ids[0] == front.llm_model and len(ids) == 2
    assert "MiniLM" in ids[1]


async def test_chat_answers_with_citations_of_the_tenants_document(front: Front) -> None:
    await front.idle()
    client = openai.OpenAI(base_url=front.base_url, api_key=front.acme_key, max_retries=0)  # the sync client
    answer = await asyncio.to_thread(
        client.chat.completions.create,
        model=MODEL,
        messages=question("What is the access code for the Zephyr vault?"),
        max_tokens=48,
        temperature=0,
    )
    choice = answer.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert answer.model == MODEL and answer.usage is not None and answer.usage.completion_tokens > 0
    forge = (answer.model_extra or {})["forge"]
    assert "zephyr.md" in {c["document_id"] for c in forge["citations"]}
    assert answer.id == f"chatcmpl-{forge['trace_id']}" and forge["degraded"] is False


async def test_streamed_chat_ends_with_finish_reason_usage_and_citations(front: Front) -> None:
    await front.idle()
    stream = await front.client(front.acme_key).chat.completions.create(
        model=MODEL,
        messages=question("Who is the harbour master of the Port of Quillmouth?"),
        max_tokens=48,
        temperature=0,
        stream=True,
        extra_body={"top_k": 2},
    )
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text.strip()
    last = chunks[-1]
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert last.choices[0].finish_reason in ("stop", "length") and last.usage is not None
    citations = (last.model_extra or {})["forge"]["citations"]
    assert 0 < len(citations) <= 2 and "quillmouth.txt" in {c["document_id"] for c in citations}


async def test_embeddings_base64_by_default_and_float(front: Front) -> None:
    client = front.client(front.acme_key)
    vectors = await client.embeddings.create(model=MODEL, input=["boiler pressure", "ferry times"])
    assert [d.index for d in vectors.data] == [0, 1]
    for d in vectors.data:
        assert len(d.embedding) == 384 and math.isclose(
            math.fsum(v * v for v in d.embedding), 1.0, rel_tol=1e-3
        )
    floats = await client.embeddings.create(model=MODEL, input="boiler pressure", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(vectors.data[0].embedding, abs=1e-6)


async def test_a_bad_key_is_401_on_every_route(front: Front) -> None:
    client = front.client("fk_not-a-key")
    with pytest.raises(openai.AuthenticationError) as err:
        await client.chat.completions.create(model=MODEL, messages=question("hi"))
    assert err.value.status_code == 401 and err.value.code == "unauthenticated"
    with pytest.raises(openai.AuthenticationError):
        await client.embeddings.create(model=MODEL, input="hi")
    with pytest.raises(openai.AuthenticationError):
        await client.models.list()


async def test_invalid_input_is_400_naming_the_field(front: Front) -> None:
    client = front.client(front.acme_key)
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(model=MODEL, messages=question("hi"), max_tokens=100_000)
    assert err.value.param == "max_tokens" and "max_tokens" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(model=MODEL, messages=question("hi"), temperature=3.5)
    assert err.value.param == "temperature"
    async with httpx.AsyncClient(base_url=front.base_url, headers=dict(bearer(front.acme_key))) as http:
        malformed = await http.post(
            "/chat/completions", content=b'{"model": ', headers={"content-type": "application/json"}
        )
        wrong_type = await http.post(
            "/chat/completions", json={"model": MODEL, "messages": question("hi"), "max_tokens": "many"}
        )
    assert malformed.status_code == 400 and malformed.json()["error"]["code"] == "json_invalid"
    assert wrong_type.status_code == 400 and wrong_type.json()["error"]["param"] == "max_tokens"


async def held_stream(client: openai.AsyncOpenAI, **options: Any) -> Any:
    """A long answer, read up to its first chunk: the router has admitted it and is generating."""
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=question(COUNTING),
        max_tokens=1500,
        temperature=0,
        stream=True,
        extra_body={"disable_retrieval": True},
        **options,
    )
    await stream.__anext__()
    return stream


async def test_tenant_quota_is_429_and_a_full_appliance_503_with_retry_after(front: Front) -> None:
    await front.idle()
    acme, beta = front.client(front.acme_key), front.client(front.beta_key)
    cancelled = cancelled_chats()
    held = [await held_stream(acme)]
    try:
        with pytest.raises(openai.RateLimitError) as quota:
            await acme.chat.completions.create(model=MODEL, messages=question("hi"), max_tokens=8)
        assert quota.value.code == "tenant_quota" and int(quota.value.response.headers["retry-after"]) >= 1
        held.append(await held_stream(beta))
        # Both sessions taken: an admin acting for a third tenant finds the appliance full.
        gamma = front.client(front.admin_key, default_headers={"x-forge-tenant": "gamma"})
        with pytest.raises(openai.InternalServerError) as full:
            await gamma.chat.completions.create(model=MODEL, messages=question("hi"), max_tokens=8)
        assert full.value.status_code == 503 and full.value.code == "session_limit"
        assert int(full.value.response.headers["retry-after"]) >= 1
        assert float(full.value.response.headers["retry-after-ms"]) > 0
        capacity = await front.capacity()
        assert capacity.active_sessions == 2 and capacity.rejected_total["SESSION_LIMIT"] >= 1
    finally:
        # Clients that go away cancel their chats: the router frees both sessions.
        for stream in held:
            await stream.close()
    await front.idle()
    assert cancelled_chats() == cancelled + 2  # not left to run to the end


async def test_a_client_that_gives_up_on_a_plain_chat_frees_its_session(front: Front) -> None:
    await front.idle()
    cancelled = cancelled_chats()
    body = {"model": MODEL, "messages": question(COUNTING), "max_tokens": 1500, "temperature": 0}
    async with httpx.AsyncClient(base_url=front.base_url, headers=dict(bearer(front.acme_key))) as http:
        with pytest.raises(httpx.ReadTimeout):  # a long answer; the client stops waiting
            await http.post("/chat/completions", json={**body, "disable_retrieval": True}, timeout=2.0)
    await front.idle()
    assert cancelled_chats() == cancelled + 1  # the router call was cancelled, not run to its end


async def test_gpu_stats_for_admin_keys_only(front: Front) -> None:
    async with httpx.AsyncClient(base_url=front.base_url) as http:
        admin = await http.get("/gpu/stats", headers=dict(bearer(front.admin_key)))
        tenant = await http.get("/gpu/stats", headers=dict(bearer(front.acme_key)))
    assert admin.status_code == 200
    ledger = admin.json()
    assert {"gpu", "services", "unreachable_services"} <= set(ledger)
    assert "gpu_available" in ledger["gpu"]
    assert {s["service"] for s in ledger["services"]} >= {"llm", "embed"}
    assert tenant.status_code == 403 and tenant.json()["error"]["type"] == "permission_error"


async def curl(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-N", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    return proc.returncode, out.decode()


async def test_curl_streams_sse_in_the_callers_trace_and_gets_errors_as_json(front: Front) -> None:
    await front.idle()
    body = {"model": MODEL, "messages": question("Count to five."), "max_tokens": 16, "stream": True}
    _, out = await curl(
        f"{front.base_url}/chat/completions",
        "-H", f"Authorization: Bearer {front.acme_key}",
        "-H", "Content-Type: application/json",
        "-H", f"traceparent: 00-{TRACE_ID}-00f067aa0ba902b7-01",
        "-d", json.dumps(body),
    )  # fmt: skip
    events = [line.removeprefix("data: ") for line in out.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and len(events) >= 3
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    # One trace: the caller's, through the gateway into the router.
    assert chunks[-1]["forge"]["trace_id"] == TRACE_ID and chunks[-1]["id"] == f"chatcmpl-{TRACE_ID}"

    _, out = await curl(
        f"{front.base_url}/chat/completions",
        "-H", "Authorization: Bearer fk_nope",
        "-H", "Content-Type: application/json",
        "-d", json.dumps(body),
        "-w", "\n%{http_code}",
    )  # fmt: skip
    error, status = out.rsplit("\n", 1)
    assert status == "401"
    assert set(json.loads(error)["error"]) == {"message", "type", "param", "code"}


async def test_forge_serve_gateway_as_a_process(front: Front, tmp_path: Path) -> None:
    """`forge serve gateway`: health over the mesh's mutual TLS like any service, the HTTP port
    announced, requests answered, SIGTERM drains and exits 0."""
    process = ServiceProcess(
        "gateway",
        env={
            "FORGE_HOME": str(tmp_path),
            "FORGE_GATEWAY_HTTP_PORT": "0",
            "FORGE_GATEWAY_ROUTER_ADDRESS": front.router.address,
        },
    )
    try:
        await process.start()
        http = await process.next_event("http_listening", timeout_s=60)
        await process.next_event("serving", timeout_s=60)
        async with process.channel() as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        async with httpx.AsyncClient() as client:
            stats = await client.get(f"{http['address']}/v1/gpu/stats", headers=dict(bearer(front.admin_key)))
        assert stats.status_code == 200 and "gpu" in stats.json()
        process.signal(signal.SIGTERM)
        assert await process.wait() == 0
    finally:
        await process.kill()
