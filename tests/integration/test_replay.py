"""A collector that loses its aggregator buffers, replays, and nothing is lost or stored twice.

The aggregator runs as a separate process and is killed with SIGKILL mid-stream, then started
again on the same port.
"""

from __future__ import annotations

import asyncio
import signal

import asyncpg

from sysmon.core.embedded import free_port
from tests.helpers import aggregator_serving, running_collector, start_aggregator_process, wait_for


async def test_kill_aggregator_mid_stream_nothing_lost_nothing_twice(
    pg_dsn: str, redis_url: str, pool: asyncpg.Pool
) -> None:
    address = f"127.0.0.1:{free_port()}"
    proc = start_aggregator_process(address, pg_dsn, redis_url)
    try:
        await wait_for(lambda: aggregator_serving(address), message="aggregator serving")
        async with running_collector(address, host_id="replay-host", interval="100ms", ack_timeout="3s") as c:
            await wait_for(lambda: c.buffer.acked >= 10, message="batches acknowledged before the kill")
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            seq_at_kill = c.buffer.last_seq or c.stats.batches
            # The collector keeps sampling while the aggregator is gone.
            await wait_for(lambda: c.stats.batches >= seq_at_kill + 10 and len(c.buffer) >= 10,
                           message="batches buffered while the aggregator is down")
            assert not c.connected.is_set()
            proc = start_aggregator_process(address, pg_dsn, redis_url)
            await wait_for(lambda: c.connected.is_set(), within=30, message="collector reconnected")
            await wait_for(lambda: c.buffer.acked >= c.stats.batches - len(c.buffer) and c.stats.connects >= 2)
            c.paused = True
            await wait_for(lambda: len(c.buffer) == 0, within=30, message="buffer replayed and acknowledged")
            produced_batches, produced_samples = c.stats.batches, c.stats.samples
        assert c.buffer.dropped == 0
        rows = await pool.fetchval("SELECT count(*) FROM samples_raw")
        distinct = await pool.fetchval("SELECT count(*) FROM (SELECT DISTINCT series_id, ts FROM samples_raw) d")
        assert rows == produced_samples, "every sample the collector produced is stored"
        assert distinct == rows, "no sample is stored twice"
        committed = await pool.fetchval(
            "SELECT committed FROM ingest_sessions WHERE host_id = 'replay-host'"
        )
        assert [(r.lower, r.upper) for r in committed] == [(1, produced_batches + 1)]
    finally:
        proc.kill()
        await asyncio.to_thread(proc.wait)
