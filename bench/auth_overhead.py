"""API-key cost per call: the server's CPU for a trivial unary call through the Forge server kit
(every interceptor a service has), with API keys off (the baseline) and on, for a valid key and
for the refusals (no key, an unknown key, a tenant key naming another tenant), same run.

Each arm has its own server process (so its CPU is measured alone, from /proc schedstat); the
client is this process. The arms take turns in rounds; each reports the median server CPU
microseconds per call and the difference to the baseline. The handler does no work, so this is
the worst case for the share auth takes. Goal (issue 12): the check costs <= 0.2 ms CPU per call,
a refusal <= 0.5 ms.

    python bench/auth_overhead.py [--calls 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from _mesh import cpu_seconds  # noqa: E402
from grpc import aio  # noqa: E402

from services.common.security.keys import KeyStore  # noqa: E402

SERVER = """
import asyncio, sys
from pathlib import Path
import grpc
sys.path.insert(0, {repo!r})
from services.common.config import load_profile
from services.common.credentials import ServerSecurity
from services.common.security.keys import KeyRing
from services.common.server import ForgeServer, ServerOptions
from tests.unit.test_channels import QuietApp

class Echo(QuietApp):
    def register(self, server):
        async def echo(request, context):
            return request
        handler = grpc.unary_unary_rpc_method_handler(echo)
        generic = grpc.method_handlers_generic_handler("forge.test.Quiet", {{"Echo": handler}})
        server.add_generic_rpc_handlers([generic])

async def main():
    keys = sys.argv[1]
    security = ServerSecurity(keys=KeyRing(Path(keys)), auth="keys") if keys else ServerSecurity()
    options = ServerOptions(port=0, gpu_watch_interval_s=None, security=security)
    server = ForgeServer(Echo(), load_profile("cpu", environ={{}}), options)
    await server.start()
    await server.load_and_serve()
    print(server.port, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""
METHOD = "/forge.test.Quiet/Echo"
CONCURRENCY = 32


async def start_server(keys_file: Path | None) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SERVER.format(repo=str(REPO_ROOT)),
        str(keys_file or ""),
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO_ROOT,
    )
    assert proc.stdout is not None
    port = int(await proc.stdout.readline())
    return proc, f"127.0.0.1:{port}"


async def round_cpu_us(
    pid: int,
    call: aio.UnaryUnaryMultiCallable[bytes, bytes],
    metadata: tuple[tuple[str, str], ...],
    calls: int,
) -> tuple[float, dict[str, int]]:
    codes: dict[str, int] = {}

    async def one() -> None:
        try:
            await call(b"x", metadata=metadata, timeout=10)
            codes["OK"] = codes.get("OK", 0) + 1
        except aio.AioRpcError as err:
            codes[err.code().name] = codes.get(err.code().name, 0) + 1

    before = cpu_seconds([pid])
    for _ in range(calls // CONCURRENCY):
        await asyncio.gather(*(one() for _ in range(CONCURRENCY)))
    return (cpu_seconds([pid]) - before) / (calls // CONCURRENCY * CONCURRENCY) * 1e6, codes


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    store = KeyStore(Path(tempfile.mkdtemp(prefix="forge-auth-bench-")) / "keys.yaml")
    key = store.create("acme")
    for n in range(200):  # a realistic key file, not a single entry
        store.create(f"tenant-{n}")
    arms: dict[str, tuple[Path | None, tuple[tuple[str, str], ...]]] = {
        "keys off (baseline)": (None, ()),
        "valid key": (store.path, (("authorization", f"Bearer {key}"),)),
        "no key (refused)": (store.path, ()),
        "unknown key (refused)": (store.path, (("authorization", "Bearer fk_00000000_" + "a" * 43),)),
        "other tenant (refused)": (
            store.path,
            (("authorization", f"Bearer {key}"), ("x-forge-tenant", "beta")),
        ),
    }
    servers = {name: await start_server(keys) for name, (keys, _) in arms.items()}
    samples: dict[str, list[float]] = {name: [] for name in arms}
    codes: dict[str, dict[str, int]] = {}
    try:
        channels = {name: aio.insecure_channel(address) for name, (_, address) in servers.items()}
        calls: dict[str, aio.UnaryUnaryMultiCallable[bytes, bytes]] = {
            name: channels[name].unary_unary(METHOD) for name in arms
        }
        for name in arms:  # warm-up
            await round_cpu_us(servers[name][0].pid, calls[name], arms[name][1], 200)
        names = list(arms)
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                cpu_us, codes[name] = await round_cpu_us(
                    servers[name][0].pid, calls[name], arms[name][1], args.calls
                )
                samples[name].append(cpu_us)
        for channel in channels.values():
            await channel.close()
    finally:
        for proc, _ in servers.values():
            proc.kill()
            await proc.wait()
    base = statistics.median(samples["keys off (baseline)"])
    print(
        f"server CPU per call, median of {args.rounds} rounds of {args.calls} calls ({CONCURRENCY} in flight)"
    )
    print(f"{'arm':<24} {'CPU us/call':>12} {'vs baseline':>12}  codes")
    for name in arms:
        median = statistics.median(samples[name])
        print(f"{name:<24} {median:>12.1f} {median - base:>+11.1f}us  {codes[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
