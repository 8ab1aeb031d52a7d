"""Live push benchmark: delay from the aggregator storing a sample to a WebSocket client receiving it.

    python bench/live.py [--clients 200] [--hosts 100] [--series 10] [--interval 5] [--duration 60]

Embedded PostgreSQL and Redis, the aggregator and the gateway (`python -m sysmon gateway`) run as
processes of their own; simulated collectors (a process of their own) send one frame of --series
samples per host every --interval seconds, stamped now. --clients WebSocket clients (this process)
subscribe like dashboards do: half to the fleet overview (every host, two metrics), half to one
host each (every metric). Delay = receipt time - `stored_ms`, the time the aggregator wrote the
batch to the hot tier and published it (the same clock: one machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Monitor, Stack, fmt, percentile, print_report
from bench.query import GatewayProcess

TARGET_P99_MS = 250.0


def _load(address: str, hosts: int, series: int, interval: float, seconds: float, conn) -> None:
    """Process entry: every host sends one frame stamped now every `interval`, staggered."""
    from bench.fleet import SimFleet

    async def main() -> None:
        fleet = SimFleet(address, hosts, series, run_id="live")
        await fleet.open()
        conn.send("ready")
        t0 = time.monotonic()
        offsets = [interval * i / hosts for i in range(hosts)]
        sent = 0

        async def host_loop(h, offset: float) -> None:
            nonlocal sent
            k = 0
            while True:
                due = t0 + offset + k * interval
                if due - t0 > seconds:
                    return
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                await fleet.send(h, [int(time.time() * 1000)])
                sent += 1
                k += 1

        await asyncio.gather(*(host_loop(h, o) for h, o in zip(fleet.hosts, offsets, strict=True)))
        await asyncio.sleep(2)
        conn.send(("done", sent, fleet.acked))
        await fleet.close()

    asyncio.run(main())


async def run(args: argparse.Namespace) -> dict:
    import httpx
    import psutil
    import websockets

    figures: dict = {"clients": args.clients, "hosts": args.hosts, "series": args.series,
                     "interval_s": args.interval}
    with Stack() as stack:
        stack.start()
        gateway = GatewayProcess(stack)
        try:
            async with httpx.AsyncClient(timeout=30) as http:
                await gateway.wait_ready(http)
            parent, child = mp.Pipe()
            load = mp.get_context("spawn").Process(
                target=_load, args=(stack.address, args.hosts, args.series, args.interval,
                                    args.warmup + args.duration, child), daemon=True)
            load.start()
            if not parent.poll(120) or parent.recv() != "ready":
                raise RuntimeError("load generator did not start")
            host_ids = [f"host-{i:03d}" for i in range(args.hosts)]
            delays: list[float] = []
            frames = [0] * args.clients
            dropped = [0] * args.clients
            measuring = False

            async def client(i: int) -> None:
                if i % 2 == 0:
                    sub = {"hosts": ["*"], "metrics": ["system.memory.usage", "system.cpu.load_average.1m"]}
                else:
                    sub = {"hosts": [host_ids[(i // 2) % len(host_ids)]], "metrics": ["*"]}
                async with websockets.connect(gateway.url.replace("http", "ws") + "/ws/live",
                                              subprotocols=["sysmon.v1"], max_size=None) as ws:
                    await ws.send(json.dumps({"type": "subscribe", **sub}))
                    async for raw in ws:
                        now = time.time() * 1000
                        msg = json.loads(raw)
                        if msg["type"] == "samples" and measuring:
                            delays.append(now - msg["stored_ms"])
                            frames[i] += 1
                        elif msg["type"] == "dropped":
                            dropped[i] += msg["count"]
                        elif msg["type"] == "subscribed":
                            ready.add(i)

            ready: set[int] = set()
            tasks = [asyncio.create_task(client(i)) for i in range(args.clients)]
            deadline = time.monotonic() + 60
            while len(ready) < args.clients:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {len(ready)} clients subscribed")
                await asyncio.sleep(0.1)
            print(f"  {args.clients} clients subscribed; warming up {args.warmup:g}s", flush=True)
            await asyncio.sleep(args.warmup)
            monitor = Monitor({"gateway": psutil.Process(gateway.proc.pid),
                               "aggregator": stack.aggregator_process, "redis": stack.redis_process,
                               "clients": psutil.Process(os.getpid())}).start()
            measuring = True
            await asyncio.sleep(args.duration)
            measuring = False
            stats = monitor.stop()
            _, sent, acked = parent.recv() if parent.poll(args.duration + 60) else ("", 0, 0)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            load.join(10)
            async with httpx.AsyncClient() as http:
                gw_metrics = (await http.get(f"{gateway.url}/metrics")).text
        finally:
            gateway.stop()
    figures.update({
        "frames_received": sum(frames), "frames_per_s": sum(frames) / args.duration,
        "delay_p50_ms": percentile(delays, 50), "delay_p99_ms": percentile(delays, 99),
        "delay_max_ms": max(delays) if delays else float("nan"),
        "dropped_frames": sum(dropped), "batches_sent": sent, "batches_acked": acked,
        "gateway_cpu_pct": stats["gateway"].cpu_pct, "gateway_rss_mib": stats["gateway"].rss_max_mib,
        "clients_cpu_pct": stats["clients"].cpu_pct, "machine_busy_pct": monitor.machine_busy_pct,
    })
    ws_dropped = next((float(x.split()[1]) for x in gw_metrics.splitlines()
                       if x.startswith("sysmon_gateway_ws_dropped_frames_total ")), float("nan"))
    rows = [
        ("load", f"{args.hosts} hosts x {args.series} series every {args.interval:g} s "
                 f"({args.hosts / args.interval:g} batches/s), {args.clients} WebSocket clients"),
        ("measured", f"{args.duration:g} s after {args.warmup:g} s warm-up"),
        ("frames received", f"{sum(frames):,} ({figures['frames_per_s']:,.0f}/s)"),
        ("delay p50 / p99 / max", f"{fmt(figures['delay_p50_ms'])} / {fmt(figures['delay_p99_ms'])} / "
                                  f"{fmt(figures['delay_max_ms'])} ms", f"p99 ≤ {TARGET_P99_MS:g} ms",
         figures["delay_p99_ms"] <= TARGET_P99_MS),
        ("frames dropped (clients / gateway)", f"{sum(dropped)} / {ws_dropped:g}", "0", sum(dropped) == 0),
        ("gateway CPU / RSS", f"{fmt(figures['gateway_cpu_pct'])} % of a core / "
                              f"{fmt(figures['gateway_rss_mib'])} MiB"),
        ("clients' CPU (this process)", f"{fmt(figures['clients_cpu_pct'])} % of a core"),
        ("machine busy", f"{fmt(figures['machine_busy_pct'])} % of both cores"),
    ]
    print_report("Live push: aggregator store -> WebSocket client", rows, figures)
    return figures


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--hosts", type=int, default=100)
    p.add_argument("--series", type=int, default=10)
    p.add_argument("--interval", type=float, default=5.0)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--warmup", type=float, default=10.0)
    args = p.parse_args(argv)
    os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
