"""Query benchmark: latency of /api/v1/query through the real gateway with a day of data for 100 hosts.

    python bench/query.py [--hosts 100] [--series 10] [--hours 24] [--requests 300]

Embedded PostgreSQL and Redis, the aggregator and the gateway (`python -m sysmon gateway`) run as
processes of their own in a fresh temp directory. Simulated collectors send every host's last 24 h
at 5 s through real gRPC; the aggregator's rollup job builds the 1-minute and 1-hour tiers, and
its sealing job turns every closed hour into blocks (the raw query then decodes them). Then
one client sends the same request again and again (one at a time, after a warm-up) and reports
p50/p99 of the whole HTTP round trip, for three queries of one series:
  24 h raw (step 10 s: 8,640 points from 17,280 rows), 7 d from 1-minute rollups (step 1 m),
  90 d from 1-hour rollups (step 1 h).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Monitor, Stack, clean_env, fmt, free_port, percentile, print_report, stop_process
from bench.fleet import SimFleet

TARGET_P99_MS = 30.0  # the 24 h raw query, decoding sealed blocks included
QUERIES = {
    "24h raw, 1 series": {"start": "now-24h", "step": "10s", "tier": "raw"},
    "7d from 1-min rollups, 1 series": {"start": "now-7d", "step": "1m", "tier": "1m"},
    "90d from 1-h rollups, 1 series": {"start": "now-90d", "step": "1h", "tier": "1h"},
}


class GatewayProcess:
    def __init__(self, stack: Stack, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(stack.data_dir / "gateway.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sysmon", "gateway"],
            env=clean_env(SYSMON_POSTGRES_URL=stack.dsn, SYSMON_REDIS_URL=stack.redis_url,
                          SYSMON_LISTEN=f"127.0.0.1:{self.port}", SYSMON_INSECURE_NO_AUTH="true",
                          SYSMON_LOG_LEVEL="warning", **env),
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, cwd=stack.data_dir,
        )

    async def wait_ready(self, http, within: float = 60) -> None:
        deadline = time.monotonic() + within
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}")
            with contextlib.suppress(OSError, httpx.TransportError):  # before the socket is open
                if (await http.get(f"{self.url}/readyz")).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("gateway not ready")
            await asyncio.sleep(0.2)

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


async def wait_rollups(dsn: str, within: float = 900) -> float:
    """Until the rollup job has nothing left to do and the 1-hour tier has rows."""
    import asyncpg

    t0 = time.monotonic()
    conn = await asyncpg.connect(dsn)
    try:
        while True:
            # The current minute and hour stay pending until they are over: wait for the rest.
            pending = await conn.fetchval(
                "SELECT count(*) FROM rollup_invalidations WHERE lo < now() - interval '2 hours'")
            hours = await conn.fetchval("SELECT count(*) FROM rollup_1h")
            if pending == 0 and hours > 0:
                return time.monotonic() - t0
            if time.monotonic() - t0 > within:
                raise RuntimeError("rollups did not catch up")
            await asyncio.sleep(2)
    finally:
        await conn.close()


async def wait_sealed(dsn: str, within: float = 1800) -> tuple[float, int, int]:
    """Until every hour that closed more than the sealing grace ago is sealed into blocks; returns
    (seconds, samples sealed, samples still open)."""
    import asyncpg

    t0 = time.monotonic()
    conn = await asyncpg.connect(dsn)
    try:
        while True:
            left = await conn.fetchval(
                "SELECT count(*) FROM samples_raw WHERE ts < date_trunc('hour', now() - interval '3 minutes')")
            if left == 0:
                sealed = await conn.fetchval("SELECT coalesce(sum(count), 0) FROM samples_sealed")
                open_rows = await conn.fetchval("SELECT count(*) FROM samples_raw")
                return time.monotonic() - t0, sealed, open_rows
            if time.monotonic() - t0 > within:
                raise RuntimeError("sealing did not catch up")
            await asyncio.sleep(2)
    finally:
        await conn.close()


async def run(args: argparse.Namespace) -> dict:
    import httpx

    figures: dict = {"hosts": args.hosts, "series_per_host": args.series, "hours": args.hours}
    with Stack(aggregator_env={"SYSMON_ROLLUP_INTERVAL": "2s"}) as stack:
        stack.start()
        fleet = SimFleet(stack.address, args.hosts, args.series, run_id="q")
        await fleet.open()
        t0 = time.monotonic()
        figures["samples_loaded"] = await fleet.load_history(args.hours)
        figures["load_s"] = time.monotonic() - t0
        await fleet.close()
        figures["rollup_s"] = await wait_rollups(stack.dsn)
        figures["seal_s"], figures["samples_sealed"], figures["samples_open"] = await wait_sealed(stack.dsn)
        # A fleet that has run for a day is vacuumed and analysed; right after a bulk load autovacuum
        # would be measured instead of the queries.
        import asyncpg

        conn = await asyncpg.connect(stack.dsn)
        await conn.execute("VACUUM ANALYZE")
        await conn.execute("CHECKPOINT")
        await conn.close()
        gateway = GatewayProcess(stack)
        try:
            async with httpx.AsyncClient(timeout=30) as http:
                await gateway.wait_ready(http)
                import psutil

                monitor = Monitor({"gateway": psutil.Process(gateway.proc.pid), "postgres": stack.postmaster},
                                  trees=["postgres"]).start()
                host = fleet.hosts[len(fleet.hosts) // 2].host_id
                rows = []
                for name, q in QUERIES.items():
                    params = {"metric": "system.memory.usage", "host": host, "match": "state=used",
                              "start": q["start"], "step": q["step"]}
                    first = (await http.get(f"{gateway.url}/api/v1/query", params=params)).json()
                    assert first["tier"] == q["tier"], first
                    points = len(first["series"][0]["values"])
                    for _ in range(args.warmup):
                        await http.get(f"{gateway.url}/api/v1/query", params=params)
                    lat = []
                    for _ in range(args.requests):
                        t = time.perf_counter()
                        r = await http.get(f"{gateway.url}/api/v1/query", params=params)
                        lat.append((time.perf_counter() - t) * 1000)
                        assert r.status_code == 200
                    f = {"tier": q["tier"], "points": points, "bytes": len(r.content),
                         "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "max_ms": max(lat)}
                    figures[name] = f
                    target = f"p99 ≤ {TARGET_P99_MS:g} ms" if "24h" in name else ""
                    rows.append(name)
                    rows.append(("tier / points / bytes", f"{q['tier']} / {points:,} / {len(r.content):,}"))
                    rows.append(("p50 / p99 / max", f"{fmt(f['p50_ms'])} / {fmt(f['p99_ms'])} / {fmt(f['max_ms'])} ms",
                                 target, (f["p99_ms"] <= TARGET_P99_MS) if target else None))
                stats = monitor.stop()
                figures["gateway_cpu_pct"] = stats["gateway"].cpu_pct
                figures["gateway_rss_mib"] = stats["gateway"].rss_max_mib
                figures["machine_busy_pct"] = monitor.machine_busy_pct
        finally:
            gateway.stop()
    rows = [
        ("data", f"{args.hosts} hosts x {args.series} series x {args.hours:g} h at 5 s = "
                 f"{figures['samples_loaded']:,} samples (loaded in {figures['load_s']:.0f} s, "
                 f"rolled up in {figures['rollup_s']:.0f} s)"),
        ("sealed / still open", f"{figures['samples_sealed']:,} / {figures['samples_open']:,} samples "
                                f"(sealing caught up {figures['seal_s']:.0f} s after the rollups)"),
        ("requests", f"{args.requests} per query, one at a time, after {args.warmup} warm-up"),
        *rows,
        ("gateway CPU / RSS", f"{fmt(figures['gateway_cpu_pct'])} % of a core / {fmt(figures['gateway_rss_mib'])} MiB"),
        ("machine busy", f"{fmt(figures['machine_busy_pct'])} % of both cores"),
    ]
    print_report("Query latency through the gateway", rows, figures)
    return figures


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hosts", type=int, default=100)
    p.add_argument("--series", type=int, default=10, help="series per host")
    p.add_argument("--hours", type=float, default=24.0)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--warmup", type=int, default=30)
    args = p.parse_args(argv)
    os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
