"""Tracing cost per gRPC call: CPU of a trivial unary call (client and server in this process,
Forge's metrics and error interceptors on the server as in every service) with and without
tracing, same run.

Arms: no tracing (the baseline); Forge's tracing (its client interceptors + the server tracing
interceptor) with no exporter (the default), with a batch span processor, and with the sampler
`always_off`; the upstream opentelemetry-instrumentation-grpc client and server interceptors with
a batch span processor, for comparison. Each arm has its own server, channel and tracer
provider; the arms take turns in rounds (rotating order) and each reports the median CPU
microseconds per call (process time: both sides and gRPC's threads) and its ratio to the
baseline. The echo handler does no work, so this is the worst case; a real call (a chat) spends
its time in the models.

    python bench/tracing_overhead.py [--calls 400] [--rounds 12]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import grpc  # noqa: E402
from grpc import aio  # noqa: E402
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor  # noqa: E402
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult  # noqa: E402
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased  # noqa: E402

from services.common import telemetry  # noqa: E402
from services.common.channels import SERVER_OPTIONS, insecure_channel  # noqa: E402
from services.common.interceptors import ErrorMappingInterceptor, MetricsInterceptor  # noqa: E402

METHOD = "/forge.bench.Echo/Echo"


class DiscardingExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


async def echo(request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


def provider(exporter: bool, sampler: Any = None) -> TracerProvider:
    made = TracerProvider(sampler=sampler) if sampler is not None else TracerProvider()
    if exporter:
        made.add_span_processor(BatchSpanProcessor(DiscardingExporter()))
    return made


def arms() -> dict[str, tuple[list[aio.ServerInterceptor], list[aio.ClientInterceptor]]]:
    default, batch = provider(False), provider(True)
    off, upstream = provider(True, ParentBased(ALWAYS_OFF)), provider(True)
    target = "127.0.0.1:0"
    return {
        "no tracing": ([], []),
        "forge, no exporter (default)": (
            [telemetry.server_interceptor(default)],
            telemetry.client_interceptors(target, default),
        ),
        "forge, batch processor": (
            [telemetry.server_interceptor(batch)],
            telemetry.client_interceptors(target, batch),
        ),
        "forge, sampler always_off": (
            [telemetry.server_interceptor(off)],
            telemetry.client_interceptors(target, off),
        ),
        # opentelemetry-instrumentation-grpc ships no types (as in services/common/telemetry.py).
        "upstream instrumentation, batch processor": (
            [aio_server_interceptor(tracer_provider=upstream)],  # type: ignore[no-untyped-call]
            aio_client_interceptors(tracer_provider=upstream),  # type: ignore[no-untyped-call]
        ),
    }


async def start(
    server_interceptors: list[aio.ServerInterceptor], client_interceptors: list[aio.ClientInterceptor]
) -> tuple[aio.Server, aio.Channel]:
    server = aio.server(
        interceptors=[*server_interceptors, MetricsInterceptor(), ErrorMappingInterceptor()],
        options=SERVER_OPTIONS,
    )
    service, name = METHOD.lstrip("/").split("/")
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(service, {name: grpc.unary_unary_rpc_method_handler(echo)})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, insecure_channel(f"127.0.0.1:{port}", interceptors=client_interceptors or None)


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=400, help="calls per arm per round")
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()

    live = {label: await start(*interceptors) for label, interceptors in arms().items()}
    calls: dict[str, aio.UnaryUnaryMultiCallable[bytes, bytes]] = {
        label: channel.unary_unary(METHOD) for label, (_, channel) in live.items()
    }
    for call in calls.values():  # warm-up: connections, code paths
        for _ in range(200):
            await call(b"x")
    samples: dict[str, list[float]] = {label: [] for label in live}
    labels = list(live)
    for round_ in range(args.rounds):
        shift = round_ % len(labels)
        for label in labels[shift:] + labels[:shift]:
            call = calls[label]
            started = time.process_time()
            for _ in range(args.calls):
                await call(b"x")
            samples[label].append((time.process_time() - started) / args.calls * 1e6)
    for server, channel in live.values():
        await channel.close()
        await server.stop(0)

    base = statistics.median(samples["no tracing"])
    print(f"{'arm':44} {'CPU us/call':>12} {'ratio':>6}")
    for label, values in samples.items():
        median = statistics.median(values)
        print(f"{label:44} {median:12.1f} {median / base:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
