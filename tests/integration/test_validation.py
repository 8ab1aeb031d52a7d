"""The aggregator's edge over real gRPC: limits, precise statuses, authentication, dedup."""

from __future__ import annotations

import math
import time

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sysmon.aggregator.server import Aggregator, ConfigurationError
from sysmon.core.settings import AggregatorSettings
from sysmon.pb.v1 import config_pb2, config_pb2_grpc, metrics_pb2
from tests.conftest import AggregatorFactory
from tests.helpers import RawClient, make_batch, wait_for

HOUR_MS = 3_600_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def test_each_bad_batch_is_rejected_alone_with_its_status(
    start_aggregator: AggregatorFactory, pool: asyncpg.Pool
) -> None:
    agg = await start_aggregator()
    h, s = "edge-host", "sess-1"
    bad = {
        2: (make_batch(h, s, 2, declare=False, values=(math.nan, 1.0)), "INVALID_ARGUMENT", "is not a finite number"),
        3: (make_batch(h, s, 3, declare=False, time_ms=now_ms() - 25 * HOUR_MS), "OUT_OF_RANGE",
            "outside the accepted window"),
        4: (make_batch(h, s, 4, declare=False, time_ms=now_ms() + HOUR_MS), "OUT_OF_RANGE",
            "outside the accepted window"),
        5: (make_batch(h, s, 5, values=(1.0,), name="bad name!"), "INVALID_ARGUMENT", "must match"),
        6: (make_batch(h, s, 6, values=(1.0,), name="x.many",
                       attributes={f"k{i}": "v" for i in range(17)}), "INVALID_ARGUMENT", "more than 16"),
        7: (make_batch(h, s, 7, declare=False, values=(1.0, 2.0, 3.0)), "INVALID_ARGUMENT", "never declared"),
        8: (make_batch(h, s, 0, declare=False), "INVALID_ARGUMENT", "seq must be at least 1"),
    }
    mismatched = make_batch(h, s, 9, declare=False)
    del mismatched.frames[0].values[1]
    bad[9] = (mismatched, "INVALID_ARGUMENT", "2 refs but 1 values")

    async with RawClient(agg.address, h, s) as client:
        client.send(make_batch(h, s, 1))
        for batch, _, _ in bad.values():
            client.send(batch)
        # Another instant: a series holds one sample per time.
        client.send(make_batch(h, s, 10, declare=False, time_ms=now_ms() + 1000))
        await wait_for(lambda: {1, 10} <= client.acked, message="good batches acknowledged")
        await wait_for(lambda: len(client.rejects) == len(bad), message="every bad batch rejected")
        summary = await client.finish()

    for seq, (batch, code, text) in bad.items():
        reject = client.rejects[batch.seq]
        assert grpc.StatusCode[code].value[0] == reject.code, (seq, reject.message)
        assert text in reject.message, reject.message
        assert f"seq={batch.seq}" in reject.message
    assert not client.acked & {b.seq for b, _, _ in bad.values()}
    assert summary.batches_received == 2 + len(bad)
    assert summary.batches_rejected == len(bad)
    # The two good batches, two samples each, and nothing else.
    assert await pool.fetchval("SELECT count(*) FROM samples_raw") == 4


async def test_stream_ends_when_it_cannot_go_on(start_aggregator: AggregatorFactory) -> None:
    agg = await start_aggregator(max_message_bytes=64 * 1024)
    async with RawClient(agg.address, "host-a", "s1") as client:
        client.send(make_batch("host-a", "s1", 1))
        client.send(make_batch("host-b", "s1", 2))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.push
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "one host and session" in err.value.details()

    async with RawClient(agg.address, "host-c", "s1") as client:
        client.send(make_batch("bad host/id", "s1", 1))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.push
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "host_id" in err.value.details()

    async with RawClient(agg.address, "host-d", "s1") as client:
        client.send(make_batch("host-d", "s1", 1, values=tuple(float(i) for i in range(10_000))))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.push
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_replayed_batch_is_acknowledged_and_stored_once(
    start_aggregator: AggregatorFactory, pool: asyncpg.Pool
) -> None:
    agg = await start_aggregator()
    t = now_ms()
    async with RawClient(agg.address, "dup-host", "s1") as client:
        client.send(make_batch("dup-host", "s1", 1, time_ms=t))
        await wait_for(lambda: 1 in client.acked)
        client.acked.clear()
        client.send(make_batch("dup-host", "s1", 1, declare=False, time_ms=t))
        await wait_for(lambda: 1 in client.acked, message="the duplicate acknowledged too")
    # A new stream (reconnect) replays it again, declaring its series anew.
    async with RawClient(agg.address, "dup-host", "s1") as client:
        client.send(make_batch("dup-host", "s1", 1, time_ms=t))
        client.send(make_batch("dup-host", "s1", 2, declare=False, time_ms=t + 5000))
        await wait_for(lambda: {1, 2} <= client.acked)
    assert await pool.fetchval("SELECT count(*) FROM samples_raw") == 4


async def test_token_is_required_except_for_health(start_aggregator: AggregatorFactory) -> None:
    agg = await start_aggregator(token="s3cret")
    channel = grpc.aio.insecure_channel(agg.address)
    apply = config_pb2_grpc.ConfigServiceStub(channel).Apply
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await apply(config_pb2.ApplyRequest())
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "missing bearer token" in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await apply(config_pb2.ApplyRequest(), metadata=(("authorization", "Bearer nope"),))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "invalid bearer token" in err.value.details()
    assert isinstance(await apply(config_pb2.ApplyRequest(), metadata=(("authorization", "Bearer s3cret"),)),
                      config_pb2.ApplyResponse)

    # Streaming methods too.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async with RawClient(agg.address, "h", "s"):
            pass
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    async with RawClient(agg.address, "h", "s", token="s3cret") as client:
        client.send(make_batch("h", "s", 1))
        await wait_for(lambda: 1 in client.acked)

    health = health_pb2_grpc.HealthStub(channel)
    resp = await health.Check(health_pb2.HealthCheckRequest(service="sysmon.v1.MetricsService"))
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    await channel.close()


def test_refuses_a_public_listener_without_a_token() -> None:
    with pytest.raises(ConfigurationError, match="without authentication"):
        Aggregator(AggregatorSettings(listen="0.0.0.0:0"), postgres_url="postgresql://x/y", redis_url=None)
    # A token, or an explicit opt-out, lifts the refusal.
    Aggregator(AggregatorSettings(listen="0.0.0.0:0", token="t"), postgres_url="postgresql://x/y", redis_url=None)


async def test_push_summary_lists_recent_rejections(start_aggregator: AggregatorFactory) -> None:
    agg = await start_aggregator()
    async with RawClient(agg.address, "sum-host", "s1") as client:
        client.send(make_batch("sum-host", "s1", 1, values=(math.inf,)))
        summary = await client.finish()
    assert summary.batches_received == 1
    assert [r.seq for r in summary.rejections] == [1]
    assert summary.rejections[0].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert isinstance(summary, metrics_pb2.PushSummary)
