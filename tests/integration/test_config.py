"""Configuration (ConfigService.Apply / Watch) and commands, over real gRPC against a real
aggregator, PostgreSQL and Redis, with real collectors following along."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis

from sysmon.agent.collector import Collector
from sysmon.aggregator.control import new_command
from sysmon.aggregator.server import Aggregator
from sysmon.core.bus import COMMANDS, RedisBus
from sysmon.core.config_model import spec_from_struct, spec_to_struct
from sysmon.pb.v1 import config_pb2, config_pb2_grpc, control_pb2, events_pb2
from tests.conftest import AggregatorFactory
from tests.helpers import running_collector, wait_for

KIND = "CollectorConfig"


def resource(name: str, spec: Mapping[str, Any], generation: int = 1, kind: str = KIND) -> config_pb2.Resource:
    return config_pb2.Resource(kind=kind, name=name, generation=generation, spec=spec_to_struct(spec))


@pytest.fixture
async def config_stub(start_aggregator: AggregatorFactory) -> AsyncIterator[tuple[Aggregator, Any]]:
    agg = await start_aggregator()
    async with grpc.aio.insecure_channel(agg.address) as channel:
        yield agg, config_pb2_grpc.ConfigServiceStub(channel)


async def first_snapshot(stub: Any, **request: Any) -> config_pb2.ConfigSnapshot:
    call = stub.Watch(config_pb2.WatchRequest(**request))
    try:
        async with asyncio.timeout(10):
            return await call.read()
    finally:
        call.cancel()


def specs(snap: config_pb2.ConfigSnapshot) -> dict[str, dict[str, Any]]:
    return {r.name: spec_from_struct(r.spec) for r in snap.resources}


async def host_row(pool: asyncpg.Pool, host_id: str) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT labels, interval_ms FROM hosts WHERE host_id = $1", host_id)


async def test_applied_config_reaches_a_running_collector(
    config_stub: tuple[Aggregator, Any], pool: asyncpg.Pool
) -> None:
    agg, stub = config_stub
    async with running_collector(agg.address, host_id="cfg-host", interval="200ms") as c:
        await wait_for(c.connected.is_set, message="collector connected")
        assert c.interval == 0.2

        resp = await stub.Apply(config_pb2.ApplyRequest(upserts=[
            resource("fleet", {"interval": "300ms", "labels": {"zone": "a"}}, generation=2)]))
        assert list(resp.stale) == []
        version = resp.version
        assert version >= 1

        await wait_for(lambda: c.interval == 0.3 and c.labels == {"zone": "a"}, message="config applied")
        assert c.config_version == version
        # New labels mean a new Hello: the host's record follows, and batches keep being acknowledged.
        await wait_for(lambda: _row_is(pool, "cfg-host", {"zone": "a"}, 300), message="host row updated")
        acked = c.buffer.acked
        await wait_for(lambda: c.buffer.acked >= acked + 3, message="batches acknowledged after the reconnect")

        # An older generation never replaces a newer one.
        resp = await stub.Apply(config_pb2.ApplyRequest(upserts=[resource("fleet", {"interval": "1s"}, 1)]))
        assert [(k.kind, k.name) for k in resp.stale] == [(KIND, "fleet")]
        assert resp.version == version
        snap = await first_snapshot(stub, kinds=[KIND])
        assert snap.version == version
        assert specs(snap) == {"fleet": {"interval": "300ms", "labels": {"zone": "a"}}}
        assert [r.generation for r in snap.resources] == [2]
        assert c.interval == 0.3

        # Deleted: the collector goes back to its command line.
        resp = await stub.Apply(config_pb2.ApplyRequest(deletes=[config_pb2.ResourceKey(kind=KIND, name="fleet")]))
        assert resp.version > version
        await wait_for(lambda: c.interval == 0.2 and c.labels == {}, message="command-line settings back")
        await wait_for(lambda: _row_is(pool, "cfg-host", {}, 200), message="host row back to no labels")


async def _row_is(pool: asyncpg.Pool, host_id: str, labels: dict[str, str], interval_ms: int) -> bool:
    row = await host_row(pool, host_id)
    return row is not None and row["labels"] == labels and row["interval_ms"] == interval_ms


async def test_invalid_resources_are_refused_naming_the_field(config_stub: tuple[Aggregator, Any]) -> None:
    _, stub = config_stub
    cases = [
        (resource("bad", {"interval": "-5s"}), "spec.interval"),
        (resource("bad", {"interval": "10ms"}), "spec.interval"),
        (resource("bad", {"metricGroups": ["cpu", "gpu"]}), "spec.metricGroups"),
        (resource("bad", {"interval": "5s"}, kind="GpuConfig"), "kind"),
        (resource("bad", {"intervall": "5s"}), "spec.intervall"),
        (resource("bad", {"hostSelector": {"matchLabels": {"zone": 5}}}), "spec.hostSelector.matchLabels.zone"),
        (resource("", {"interval": "5s"}), "name"),
        (resource("bad", {"interval": "5s"}, generation=-1), "generation"),
    ]
    for res, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            # A valid resource in the same call is not applied either: the call is all or nothing.
            await stub.Apply(config_pb2.ApplyRequest(upserts=[resource("good", {"interval": "1s"}), res]))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        details = e.value.details() or ""
        assert f"{field}:" in details, (field, details)
        assert "upserts[1]" in details
    assert "gpu" in details_of(await _apply_error(stub, resource("bad", {"metricGroups": ["gpu"]})))
    assert "GpuConfig" in details_of(await _apply_error(stub, resource("bad", {}, kind="GpuConfig")))

    snap = await first_snapshot(stub)
    assert snap.version == 0
    assert list(snap.resources) == []


async def _apply_error(stub: Any, res: config_pb2.Resource) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.Apply(config_pb2.ApplyRequest(upserts=[res]))
    return e.value


def details_of(e: grpc.aio.AioRpcError) -> str:
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    return e.details() or ""


async def test_watch_delivers_only_to_selected_hosts(config_stub: tuple[Aggregator, Any]) -> None:
    _, stub = config_stub
    await stub.Apply(config_pb2.ApplyRequest(upserts=[
        resource("zone-a", {"hostSelector": {"matchLabels": {"zone": "a"}}, "interval": "300ms"})]))

    in_a = stub.Watch(config_pb2.WatchRequest(kinds=[KIND], host_id="h1", labels={"zone": "a", "rack": "7"}))
    in_b = stub.Watch(config_pb2.WatchRequest(kinds=[KIND], host_id="h2", labels={"zone": "b"}))
    unlabelled = stub.Watch(config_pb2.WatchRequest(kinds=[KIND], host_id="h3"))
    everything = stub.Watch(config_pb2.WatchRequest())  # e.g. the operator: every resource
    calls = (in_a, in_b, unlabelled, everything)
    try:
        async with asyncio.timeout(10):
            first = [await c.read() for c in calls]
            assert [sorted(specs(s)) for s in first] == [["zone-a"], [], [], ["zone-a"]]
            assert len({s.version for s in first}) == 1

            # A resource for every host reaches every watcher, each with its own selection.
            resp = await stub.Apply(config_pb2.ApplyRequest(upserts=[resource("all", {"metricGroups": ["cpu"]})]))
            second = [await c.read() for c in calls]
        assert [sorted(specs(s)) for s in second] == [["all", "zone-a"], ["all"], ["all"], ["all", "zone-a"]]
        assert {s.version for s in second} == {resp.version}
    finally:
        for c in calls:
            c.cancel()


async def test_applied_config_survives_an_aggregator_restart(start_aggregator: AggregatorFactory) -> None:
    agg = await start_aggregator()
    async with grpc.aio.insecure_channel(agg.address) as ch:
        resp = await config_pb2_grpc.ConfigServiceStub(ch).Apply(config_pb2.ApplyRequest(
            upserts=[resource("fleet", {"interval": "2s"}, generation=3)]))
    await agg.stop(grace=0.5)

    again = await start_aggregator()  # same database
    async with grpc.aio.insecure_channel(again.address) as ch:
        snap = await first_snapshot(config_pb2_grpc.ConfigServiceStub(ch), kinds=[KIND])
    assert snap.version == resp.version
    assert specs(snap) == {"fleet": {"interval": "2s"}}
    assert [r.generation for r in snap.resources] == [3]


async def send_command(agg: Aggregator, bus: RedisBus, host_id: str, **action: Any) -> control_pb2.CommandResult:
    cmd = new_command(**action)
    await bus.publish(COMMANDS, events_pb2.CommandEvent(host_id=host_id, command=cmd).SerializeToString())
    async with asyncio.timeout(10):
        return await agg.hub.wait_result(cmd.command_id)


async def connected(agg: Aggregator, c: Collector) -> None:
    await wait_for(lambda: c.connected.is_set() and (c.settings.host_id, c.session_id) in agg.hub.peers,
                   message="collector's control stream open")


async def test_commands_over_the_bus_reach_the_collector(
    start_aggregator: AggregatorFactory, redis_client: aioredis.Redis
) -> None:
    agg = await start_aggregator()
    bus = RedisBus(redis_client)
    async with running_collector(agg.address, host_id="cmd-host", interval="200ms") as c:
        await connected(agg, c)

        res = await send_command(agg, bus, "cmd-host", set_interval=control_pb2.SetInterval(interval_ms=400))
        assert res.ok, res.message
        assert c.interval == 0.4

        res = await send_command(agg, bus, "cmd-host", set_interval=control_pb2.SetInterval(interval_ms=50))
        assert not res.ok
        assert "50 ms" in res.message
        assert c.interval == 0.4

        res = await send_command(agg, bus, "cmd-host")  # no action at all
        assert not res.ok
        assert "unknown command" in res.message

        res = await send_command(agg, bus, "cmd-host", pause=control_pb2.Pause())
        assert res.ok
        assert c.paused

        res = await send_command(agg, bus, "cmd-host", resume=control_pb2.Resume())
        assert res.ok
        assert not c.paused
        batches, acked = c.stats.batches, c.buffer.acked
        await wait_for(lambda: c.stats.batches >= batches + 2 and c.buffer.acked >= acked + 2,
                       message="new batches sampled and acknowledged after resume")


async def test_waiting_again_for_a_command_result_after_a_timeout(
    start_aggregator: AggregatorFactory, redis_client: aioredis.Redis
) -> None:
    agg = await start_aggregator()
    bus = RedisBus(redis_client)
    async with running_collector(agg.address, host_id="cmd-host", interval="200ms") as c:
        await connected(agg, c)
        cmd = new_command(set_interval=control_pb2.SetInterval(interval_ms=300))
        # A caller that gives up before the command is even sent ...
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await agg.hub.wait_result(cmd.command_id)
        # ... and another that waits for the answer.
        waiter = asyncio.create_task(agg.hub.wait_result(cmd.command_id))
        await bus.publish(COMMANDS, events_pb2.CommandEvent(host_id="cmd-host", command=cmd).SerializeToString())
        await wait_for(lambda: c.interval == 0.3, message="command applied")
        async with asyncio.timeout(10):
            res = await asyncio.gather(waiter, return_exceptions=True)
        assert isinstance(res[0], control_pb2.CommandResult), res
        assert res[0].ok


def _control_stream_tasks() -> list[asyncio.Task[Any]]:
    """Tasks the aggregator's Connect handler started (its outbox read, its reader)."""
    return [t for t in asyncio.all_tasks() if not t.done()
            and t.get_coro().__qualname__ in {"Queue.get", "ControlServicer._read"}]


async def test_stopping_the_aggregator_leaves_no_control_stream_task_behind(
    start_aggregator: AggregatorFactory,
) -> None:
    # A task left pending is reported as "Task was destroyed but it is pending!" when the
    # process exits: `sysmon up` would end with an ERROR line on Ctrl-C.
    agg = await start_aggregator()
    async with running_collector(agg.address, host_id="stop-host", interval="200ms") as c:
        await connected(agg, c)
        assert _control_stream_tasks(), "the open control stream should be waiting on its outbox"
        await agg.stop(grace=0.5)
        await wait_for(lambda: not _control_stream_tasks(), within=5,
                       message=f"control stream tasks ended: {_control_stream_tasks()}")
