"""Aggregators and gateways past one replica on the default (Redis) bus.

Two aggregator processes stand behind one address, as behind a Kubernetes Service: collectors
spread over them, and when one is killed (SIGKILL) its collectors fail over to the other through
the same address and replay; PostgreSQL then holds every sample once. Two gateways serve the same
live stream."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time

import asyncpg

from sysmon.agent.collector import Collector
from sysmon.core.embedded import free_port
from tests.conftest import AggregatorFactory
from tests.gateway_helpers import two_gateways_serve_every_host
from tests.helpers import TcpProxy, aggregator_serving, running_collector, start_aggregator_process, wait_for

HOSTS = [f"rep-{i}" for i in range(4)]


async def test_collectors_spread_over_two_aggregators_and_fail_over_without_loss(
    pg_dsn: str, redis_url: str, pool: asyncpg.Pool
) -> None:
    backends = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    procs: list[subprocess.Popen[bytes]] = [start_aggregator_process(a, pg_dsn, redis_url) for a in backends]
    proxy = TcpProxy(*backends)
    try:
        for a in backends:
            await wait_for(lambda a=a: aggregator_serving(a), within=60, message=f"aggregator on {a} serving")
        await proxy.start()
        async with contextlib.AsyncExitStack() as stack:
            collectors: list[Collector] = [
                await stack.enter_async_context(
                    running_collector(proxy.address, host_id=h, interval="100ms", ack_timeout="3s"))
                for h in HOSTS
            ]
            await wait_for(lambda: all(c.buffer.acked >= 5 for c in collectors), within=30,
                           message="every collector acknowledged through the shared address")
            assert all(proxy.taken), f"the collectors did not spread: connections per aggregator {proxy.taken}"

            # One aggregator dies; its collectors come back through the same address, to the other.
            at_kill = [c.buffer.acked for c in collectors]
            moved = proxy.taken[1]
            procs[0].send_signal(signal.SIGKILL)
            killed = time.monotonic()
            await asyncio.to_thread(procs[0].wait, 10)
            await wait_for(lambda: proxy.taken[1] > moved, within=30, message="a collector failed over")
            await wait_for(lambda: all(c.buffer.acked > a for c, a in zip(collectors, at_kill, strict=True)),
                           within=60, message="every collector acknowledged after the kill")
            recovery_s = time.monotonic() - killed
            acked = [c.buffer.acked for c in collectors]
            await wait_for(lambda: all(c.buffer.acked >= a + 10 for c, a in zip(collectors, acked, strict=True)),
                           within=60, message="every collector acknowledged again after the fail-over")
            for c in collectors:
                c.paused = True
            await wait_for(lambda: all(len(c.buffer) == 0 for c in collectors), within=30,
                           message="buffers replayed and acknowledged")
            produced = {h: (c.stats.batches, c.stats.samples) for h, c in zip(HOSTS, collectors, strict=True)}
        reconnected = sum(c.stats.connects for c in collectors) - len(HOSTS)
        assert reconnected > 0, "no collector reconnected"
        assert all(c.buffer.dropped == 0 for c in collectors)
        for host, (batches, samples) in produced.items():
            rows = await pool.fetchval(
                "SELECT count(*) FROM samples_raw r JOIN series s USING (series_id) WHERE s.host_id = $1", host)
            distinct = await pool.fetchval(
                "SELECT count(*) FROM (SELECT DISTINCT r.series_id, r.ts FROM samples_raw r"
                " JOIN series s USING (series_id) WHERE s.host_id = $1) d", host)
            assert rows == samples, f"{host}: {rows} samples stored of {samples} produced"
            assert distinct == rows, f"{host}: a sample stored twice"
            committed = await pool.fetchval("SELECT committed FROM ingest_sessions WHERE host_id = $1", host)
            assert [(r.lower, r.upper) for r in committed] == [(1, batches + 1)], f"{host}: a batch missing"
        print(f"FAILOVER aggregator SIGKILL behind one address: {reconnected} of {len(HOSTS)} collectors moved, "
              f"every collector acknowledged again {recovery_s:.1f}s after the kill, lost 0, duplicated 0", flush=True)
    finally:
        if proxy.server is not None:
            await proxy.stop()
        for p in procs:
            p.kill()
            await asyncio.to_thread(p.wait)


async def test_two_gateways_serve_the_same_live_stream(
    start_aggregator: AggregatorFactory, pg_dsn: str, redis_url: str
) -> None:
    agg = await start_aggregator()
    await two_gateways_serve_every_host(agg.address, pg_dsn, redis_url, [f"redis-gw-{i}" for i in range(3)])
