"""A hostile client holding a valid credential, over real gRPC, against real PostgreSQL and Redis:
extreme values, sequence numbers beyond int8, corrupt messages, cardinality spread over streams,
floods, and the same samples from another session. Each is answered precisely, alone, and
nothing another host sends is held back or lost.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import grpc
import pytest

from sysmon.aggregator import maintenance, telemetry
from sysmon.aggregator.normalize import StreamDecoder
from sysmon.core.metrics import Limits
from sysmon.pb.v1 import control_pb2, control_pb2_grpc
from tests.conftest import AggregatorFactory
from tests.gateway_helpers import running_gateway
from tests.helpers import RawClient, make_batch, wait_for

MAX = sys.float_info.max
CPU = "system.cpu.utilization"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def test_extreme_values_are_stored_rolled_up_and_queried_without_overflow(
    start_aggregator: AggregatorFactory, pool: asyncpg.Pool, pg_dsn: str, redis_url: str
) -> None:
    """Five samples of the largest float64: their float8 sum overflows. Rollups keep running for
    every host, and every tier answers the query (no 500)."""
    agg = await start_aggregator()
    t0 = now_ms() - 2 * 3_600_000
    t0 -= t0 % 60_000
    async with RawClient(agg.address, "huge", "s1") as huge, RawClient(agg.address, "calm", "s1") as calm:
        for i in range(5):
            huge.send(make_batch("huge", "s1", i + 1, declare=i == 0, time_ms=t0 + i * 1000, values=(MAX, MAX)))
            calm.send(make_batch("calm", "s1", i + 1, declare=i == 0, time_ms=t0 + i * 1000, values=(1.0, 2.0)))
        huge.send(make_batch("huge", "s1", 6, declare=False, values=(MAX, -MAX)))  # now: the hot tier
        await wait_for(lambda: len(huge.acked) == 6 and len(calm.acked) == 5, message="all stored")

    run = await maintenance.rollup_once(agg.storage, datetime.now(UTC))
    assert run is not None
    assert run.skipped == {"1m": [], "1h": []}
    rows = {r["host_id"]: r for r in await pool.fetch(
        "SELECT s.host_id, r.min, r.max, r.sum, r.count FROM rollup_1m r JOIN series s USING (series_id) "
        "WHERE s.attributes->>'cpu' = '0' AND r.bucket = to_timestamp($1 / 1000.0)", t0)}
    assert (rows["huge"]["max"], rows["huge"]["count"]) == (MAX, 5)
    assert rows["huge"]["sum"] == 5 * Decimal(repr(MAX))  # exact, far beyond float64
    assert (rows["calm"]["sum"], rows["calm"]["count"]) == (5, 5)  # the other host was not held back
    assert await pool.fetchval("SELECT count(*) FROM rollup_1h r JOIN series s USING (series_id) "
                               "WHERE s.host_id = 'huge'") == 2

    async with running_gateway(pg_dsn, redis_url) as gw:
        for start, tier in (("now-3h", "raw"), ("now-2d", "1m"), ("now-10d", "1h")):
            r = await gw.http.get("/api/v1/query", params={"metric": CPU, "host": "huge", "match": "cpu=0",
                                                            "start": start, "step": "1h"})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["tier"] == tier
            assert MAX in body["series"][0]["values"], (tier, body["series"][0]["values"])
            summed = await gw.http.get("/api/v1/query", params={"metric": CPU, "host": "huge", "start": start,
                                                                 "step": "1h", "sum_by": "host"})
            assert summed.status_code == 200, summed.text
            # MAX + MAX saturates at the largest finite value: JSON has no infinity.
            assert MAX in summed.json()["series"][0]["values"]
        hot = await gw.http.get("/api/v1/query", params={"metric": CPU, "host": "huge", "start": "now-2m",
                                                          "step": "1h"})
        assert hot.status_code == 200, hot.text
        assert hot.json()["tier"] == "hot"
        assert sorted(v for s in hot.json()["series"] for v in s["values"]) == [-MAX, MAX]


async def test_a_seq_beyond_int8_is_rejected_alone_while_other_collectors_flow(
    start_aggregator: AggregatorFactory, pool: asyncpg.Pool
) -> None:
    agg = await start_aggregator(commit_linger="100ms")
    async with RawClient(agg.address, "poison", "s1") as bad, RawClient(agg.address, "good", "s1") as good:
        bad.send(make_batch("poison", "s1", 2**63))
        for seq in range(1, 6):
            good.send(make_batch("good", "s1", seq, declare=seq == 1, time_ms=now_ms() - seq * 1000))
        await wait_for(lambda: 2**63 in bad.rejects and len(good.acked) == 5, message="rejected and stored")
    assert bad.rejects[2**63].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "at most 2^63-1" in bad.rejects[2**63].message
    assert good.nacks == []
    assert bad.nacks == []
    assert await pool.fetchval("SELECT count(*) FROM samples_raw") == 10


async def test_a_batch_postgresql_refuses_is_rejected_alone_and_its_group_still_commits(
    start_aggregator: AggregatorFactory, pool: asyncpg.Pool
) -> None:
    """Past the edge's checks (defence in depth): a batch PostgreSQL refuses for its own data is
    found by committing the group's batches one by one; the others are stored and acknowledged."""
    agg = await start_aggregator(commit_linger="300ms")
    before = telemetry.POISON_BATCHES._value.get()
    decoder = StreamDecoder(Limits())
    poison = decoder.decode(make_batch("mixed", "s1", 1), now_ms())
    poison.seq = 2**63  # not an int8: the group commit fails on it
    async with RawClient(agg.address, "mixed", "s1") as a, RawClient(agg.address, "other", "s1") as b:
        good = [StreamDecoder(Limits()).decode(make_batch("other", "s1", i, time_ms=now_ms() - i * 1000), now_ms())
                for i in (1, 2)]
        for batch in (good[0], poison, good[1]):
            await agg.ingest.submit(batch)
        await wait_for(lambda: b.acked == {1, 2} and 2**63 in a.rejects, message="good stored, poison refused")
    assert "storage refused it" in a.rejects[2**63].message
    assert b.nacks == []
    assert telemetry.POISON_BATCHES._value.get() == before + 1
    assert await pool.fetchval("SELECT count(*) FROM samples_raw") == 4


async def test_corrupt_messages_get_invalid_argument_without_a_traceback(
    start_aggregator: AggregatorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    agg = await start_aggregator(token="s3cret")
    md = (("authorization", "Bearer s3cret"),)
    junk = b"\xff\xff\xff\xff"
    channel = grpc.aio.insecure_channel(agg.address)

    async def one() -> bytes:
        yield junk

    calls = {
        "Push": lambda: channel.stream_unary("/sysmon.v1.MetricsService/Push")(one(), metadata=md),
        "Apply": lambda: channel.unary_unary("/sysmon.v1.ConfigService/Apply")(junk, metadata=md),
    }
    with caplog.at_level(logging.INFO):
        for name, call in calls.items():
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call()
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
            assert f"malformed request on sysmon.v1.{'MetricsService' if name == 'Push' else 'ConfigService'}/{name}" \
                in err.value.details()
        for method in ("/sysmon.v1.ControlService/Connect", "/sysmon.v1.ConfigService/Watch"):
            stream = (channel.stream_stream(method)(one(), metadata=md) if "Connect" in method
                      else channel.unary_stream(method)(junk, metadata=md))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in stream:
                    pass
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
        # A good Hello first, then garbage on the same control stream.
        control = channel.stream_stream("/sysmon.v1.ControlService/Connect")(metadata=md)
        await control.write(control_pb2.AgentMessage(
            hello=control_pb2.Hello(host_id="h", session_id="s")).SerializeToString())
        assert control_pb2.AggregatorMessage.FromString(await control.read()).WhichOneof("body") == "welcome"
        await control.write(junk)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _read_to_end(control)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await channel.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
    # Logged once (then only counted), never with a traceback.
    warned = [r for r in caplog.records if "malformed message" in r.getMessage()]
    assert len(warned) == 1
    assert warned[0].exc_info is None


async def test_series_limit_holds_per_host_over_parallel_streams(start_aggregator: AggregatorFactory) -> None:
    agg = await start_aggregator(max_series_per_host=50)
    clients = [RawClient(agg.address, "wide", f"s{i}") for i in range(5)]
    accepted = 0
    for i, c in enumerate(clients):
        await c.__aenter__()
        c.send(make_batch("wide", f"s{i}", 1, values=tuple(range(20)), name=f"custom.m{i}"))
    try:
        await wait_for(lambda: sum(len(c.acked) + len(c.rejects) for c in clients) == 5,
                       message="every batch answered")
        for c in clients:
            accepted += len(c.acked)
            for rej in c.rejects.values():
                assert rej.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
                assert "limit per host (50)" in rej.message
        assert accepted == 2  # 40 series; a third stream's 20 would make 60
        assert agg._server is not None
    finally:
        for c in clients:
            await c.__aexit__(None, None, None)


async def test_a_flood_is_sent_back_with_resource_exhausted_and_nothing_is_lost(
    start_aggregator: AggregatorFactory, pool: asyncpg.Pool
) -> None:
    agg = await start_aggregator(max_samples_per_second_per_host=200, max_sample_burst_per_host=200)
    values = tuple(float(i) for i in range(100))
    t = now_ms()
    async with RawClient(agg.address, "flood", "s1") as c:
        for seq in range(1, 6):
            c.send(make_batch("flood", "s1", seq, declare=seq == 1, time_ms=t - seq * 1000, values=values))
        await wait_for(lambda: len(c.acked) + len({q for n in c.nacks for q in n.seqs}) == 5,
                       message="the burst stored, the rest sent back")
        assert len(c.acked) >= 2  # the burst
        nack = c.nacks[0]
        assert nack.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        assert "over its budget of 200 samples/s" in nack.reason
        assert nack.retry_after_ms > 0
        # A collector sends them again when told (after retry_after_ms): each is then stored.
        for seq in sorted({seq for n in c.nacks for seq in n.seqs}):
            while seq not in c.acked:
                c.nacks.clear()
                c.send(make_batch("flood", "s1", seq, declare=False, time_ms=t - seq * 1000, values=values))
                await wait_for(lambda s=seq: s in c.acked or bool(c.nacks), message=f"batch {seq} answered")
                if seq not in c.acked:
                    # The server's retry hint is the protocol under test, not a guess.
                    await asyncio.sleep(c.nacks[0].retry_after_ms / 1000)
        assert c.acked == {1, 2, 3, 4, 5}
    assert await pool.fetchval("SELECT count(*) FROM samples_raw") == 500


async def _read_to_end(call: grpc.aio.StreamStreamCall) -> None:
    while await call.read() is not grpc.aio.EOF:
        pass


async def test_the_same_samples_from_another_session_are_stored_once(
    start_aggregator: AggregatorFactory, pool: asyncpg.Pool
) -> None:
    agg = await start_aggregator()
    before = telemetry.DUPLICATE_SAMPLES._value.get()
    t = now_ms() - 10_000
    async with RawClient(agg.address, "twin", "s1") as first, RawClient(agg.address, "twin", "s2") as second:
        first.send(make_batch("twin", "s1", 1, time_ms=t, values=(1.0, 2.0)))
        await wait_for(lambda: 1 in first.acked)
        second.send(make_batch("twin", "s2", 1, time_ms=t, values=(9.0, 9.0)))
        second.send(make_batch("twin", "s2", 2, declare=False, time_ms=t + 1000, values=(3.0, 4.0)))
        await wait_for(lambda: {1, 2} <= second.acked, message="both acknowledged")
    rows = await pool.fetch("SELECT value FROM samples_raw ORDER BY ts, value")
    assert [r["value"] for r in rows] == [1.0, 2.0, 3.0, 4.0]  # the first kept, the second counted
    assert telemetry.DUPLICATE_SAMPLES._value.get() == before + 2


async def test_a_replaced_control_stream_is_closed_and_its_collector_takes_it_back(
    start_aggregator: AggregatorFactory,
) -> None:
    """With the fleet-wide token anyone may claim a session (that is why collectors get their own
    credentials); what must hold is that the rightful collector is told, reconnects and is
    acknowledged again rather than left connected and deaf."""
    from tests.helpers import running_collector

    agg = await start_aggregator(token="fleet")
    async with running_collector(agg.address, token="fleet", host_id="victim") as collector:
        await wait_for(lambda: collector.buffer.acked >= 2, message="collector acknowledged")
        intruder = RawClient(agg.address, "victim", collector.session_id, token="fleet")
        await intruder.__aenter__()
        try:
            await wait_for(lambda: collector.stats.connects >= 2, message="the collector reconnected")
            acked = collector.buffer.acked
            await wait_for(lambda: collector.buffer.acked >= acked + 3, message="acknowledged again")
            assert intruder._reader is not None
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await intruder._reader
            assert err.value.code() == grpc.StatusCode.ABORTED
            assert "replaced by a newer one" in err.value.details()
        finally:
            await intruder.__aexit__(None, None, None)


@pytest.mark.parametrize(("hello", "text"), [
    ({"labels": {f"k{i}": "v" for i in range(65)}}, "labels: 65 labels, more than 64"),
    ({"labels": {"k" * 64: "v"}}, "keys 1-63 and values 0-63 characters"),
    ({"labels": {"team": "v" * 64}}, "keys 1-63 and values 0-63 characters"),
    ({"hostname": "h" * 254}, "hostname: longer than 253 characters"),
    ({"agent_version": "1" * 129}, "agent_version: longer than 128 characters"),
    ({"os": "L" * 129}, "os: longer than 128 characters"),
    ({"session_id": ".hidden"}, "starting with a letter or digit"),
])
async def test_a_hello_over_a_limit_ends_the_stream_naming_the_limit_and_stores_nothing(
    start_aggregator: AggregatorFactory, pool: asyncpg.Pool, hello: dict[str, object], text: str
) -> None:
    agg = await start_aggregator()
    fields: dict[str, object] = {"host_id": "big-hello", "session_id": "s1", **hello}
    async with grpc.aio.insecure_channel(agg.address) as channel:
        control = control_pb2_grpc.ControlServiceStub(channel).Connect()
        await control.write(control_pb2.AgentMessage(hello=control_pb2.Hello(**fields)))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            # Refused at once: a Welcome here (or nothing) fails the test.
            await asyncio.wait_for(control.read(), 10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("hello: ")
    assert text in err.value.details(), err.value.details()
    assert await pool.fetchval("SELECT count(*) FROM hosts") == 0


async def test_a_hello_at_every_limit_is_welcomed_and_recorded(
    start_aggregator: AggregatorFactory, pool: asyncpg.Pool
) -> None:
    agg = await start_aggregator()
    labels = {f"{i:02d}" + "k" * 61: "v" * 63 for i in range(64)}
    async with grpc.aio.insecure_channel(agg.address) as channel:
        control = control_pb2_grpc.ControlServiceStub(channel).Connect()
        await control.write(control_pb2.AgentMessage(hello=control_pb2.Hello(
            host_id="full-hello", session_id="s1", hostname="h" * 253, labels=labels,
            agent_version="1" * 128, os="L" * 128)))
        assert (await control.read()).WhichOneof("body") == "welcome"
        row = await wait_for(lambda: pool.fetchrow("SELECT hostname, labels, os FROM hosts"),
                             message="the host recorded")
        control.cancel()
    assert row["hostname"] == "h" * 253
    assert row["os"] == "L" * 128
    assert row["labels"] == labels
