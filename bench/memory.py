"""Where the aggregator's memory goes: what its imports cost, and what gRPC itself holds per stream.

The aggregator's RSS at the 1,000-host steady load (bench/ingest.py) has three parts: the code it
imports, the two gRPC streams each collector keeps open (Push and Connect), and sysmon's own
per-host state. This measures the first two apart from sysmon: each import in a fresh interpreter,
and a bare grpc.aio server (no sysmon code) holding `--hosts` x (a client stream and a bidi stream)
over `--channels` connections, fed a message of `--message-bytes` every `--interval` seconds, as
the ingest benchmark's collectors do.

    python bench/memory.py [--hosts 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time

IMPORTS = ("grpc", "numpy", "redis.asyncio", "asyncpg", "pydantic_settings", "jwt", "prometheus_client",
           "pcodec")
WHOLE = "import sysmon.cli, sysmon.aggregator.server"
KiB = 1024


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def import_cost(statement: str) -> float:
    """MiB of RSS that `statement` adds to a bare interpreter."""
    code = ("def rss():\n    for l in open('/proc/self/status'):\n"
            "        if l.startswith('VmRSS:'): return int(l.split()[1])\n"
            f"b = rss()\n{statement}\nprint(rss() - b)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return int(out.split()[-1]) / KiB


# --- the bare gRPC server and its load ------------------------------------------------------------

async def _serve(hosts: int, channels: int, interval: float, message_bytes: int, settle: float) -> dict[str, float]:
    import grpc

    async def push(requests, context):
        async for _ in requests:
            pass
        return b""

    async def connect(requests, context):
        async for m in requests:
            yield m[:8]

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.S", {
        "Push": grpc.stream_unary_rpc_method_handler(push),
        "Connect": grpc.stream_stream_rpc_method_handler(connect)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    idle = rss_kib()
    client = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--client", str(port), "--hosts", str(hosts), "--channels", str(channels),
        "--interval", str(interval), "--message-bytes", str(message_bytes), stdout=asyncio.subprocess.PIPE)
    assert client.stdout is not None
    try:
        await asyncio.wait_for(client.stdout.readline(), 120)  # "open": every stream has sent a message
        deadline = time.monotonic() + settle
        samples = []
        while time.monotonic() < deadline:
            await asyncio.sleep(1)
            samples.append(rss_kib())
    finally:
        client.kill()
        await client.wait()
        await server.stop(None)
    return {"idle_mib": idle / KiB, "loaded_mib": max(samples) / KiB}


async def _client(port: int, hosts: int, channels: int, interval: float, message_bytes: int) -> None:
    import grpc

    # A connection of its own per channel (channels to one address share one by default), as in
    # bench/ingest.py.
    chans = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
             for _ in range(channels)]
    opened = 0
    all_open = asyncio.Event()

    async def host(i: int) -> None:
        nonlocal opened
        ch = chans[i % channels]
        first = asyncio.Event()

        async def batches():
            while True:
                yield b"x" * message_bytes
                first.set()
                await asyncio.sleep(interval)

        async def heartbeats():
            while True:
                yield b"h" * 16
                await asyncio.sleep(interval)

        call = ch.stream_stream("/bench.S/Connect")(heartbeats())
        sent = asyncio.ensure_future(ch.stream_unary("/bench.S/Push")(batches()))
        await call.read()
        await first.wait()
        opened += 1
        if opened == hosts:
            all_open.set()
        await asyncio.gather(sent, return_exceptions=True)

    tasks = [asyncio.ensure_future(host(i)) for i in range(hosts)]
    await all_open.wait()
    print("open", flush=True)
    await asyncio.gather(*tasks, return_exceptions=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Per stream, the figure is the same at 100 and 300 hosts (29 and 26 KiB); this bare client, one
    # process, stalls opening streams past about 700 hosts.
    p.add_argument("--hosts", type=int, default=300)
    p.add_argument("--channels", type=int, default=3, help="connections (the ingest benchmark: 100 hosts each)")
    p.add_argument("--interval", type=float, default=5.0)
    p.add_argument("--message-bytes", type=int, default=700, help="a 60-series batch is about 700 bytes")
    p.add_argument("--settle", type=float, default=20.0, help="seconds of load after every stream is open")
    p.add_argument("--client", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client is not None:
        asyncio.run(_client(args.client, args.hosts, args.channels, args.interval, args.message_bytes))
        return

    figures: dict[str, object] = {"bench": "memory", "hosts": args.hosts}
    print("-- imports (MiB of RSS each adds to a bare interpreter, measured alone)")
    base = subprocess.run([sys.executable, "-c", "print(open('/proc/self/status').read())"], check=True,
                          capture_output=True, text=True).stdout
    figures["interpreter_mib"] = round(next(int(line.split()[1]) for line in base.splitlines()
                                            if line.startswith("VmRSS:")) / KiB, 1)
    imports: dict[str, float] = {}
    for name in IMPORTS:
        imports[name] = round(import_cost(f"import {name}"), 1)
        print(f"  {name:<24}{imports[name]:8.1f}")
    whole = round(import_cost(WHOLE), 1)
    print(f"  {'the aggregator, all':<24}{whole:8.1f}   (shared dependencies counted once)")
    crypto = subprocess.run([sys.executable, "-c", "import jwt, sys; print('cryptography' in sys.modules)"],
                            check=True, capture_output=True, text=True).stdout.strip() == "True"
    print(f"  PyJWT loaded cryptography: {crypto} (only the dev extra installs it; HS256 does not need it)")
    figures.update(imports=imports, aggregator_imports_mib=whole,
                   jwt_loaded_cryptography=crypto)

    print(f"-- a bare grpc.aio server: {args.hosts} hosts x (Push + Connect) over {args.channels} connections")
    g = asyncio.run(_serve(args.hosts, args.channels, args.interval, args.message_bytes, args.settle))
    streams = 2 * args.hosts
    per_stream = (g["loaded_mib"] - g["idle_mib"]) * KiB / streams
    print(f"  idle {g['idle_mib']:.1f} MiB, with {streams} streams {g['loaded_mib']:.1f} MiB: "
          f"{per_stream:.1f} KiB per stream, {(g['loaded_mib'] - g['idle_mib']):.1f} MiB in all")
    figures.update(grpc_idle_mib=round(g["idle_mib"], 1), grpc_loaded_mib=round(g["loaded_mib"], 1),
                   grpc_streams=streams, grpc_kib_per_stream=round(per_stream, 1))
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
