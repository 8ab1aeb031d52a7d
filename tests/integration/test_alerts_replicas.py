"""Two alerts replicas share the fleet by host: on Kafka the consumer group gives each some
partitions of the samples topic, on Redis each holds leases on some of its shards; each evaluates
only the hosts keyed to them, and every alert is notified once. When one replica stops, the other
takes its hosts over with their alerts from PostgreSQL and their windows from the hot tier, as
after a restart."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from sysmon.alerts.service import AlertsService
from sysmon.core.bus import partition_for, shard_key
from sysmon.core.bus.leases import holder_of
from sysmon.core.settings import AlertsSettings
from tests.conftest import AggregatorFactory
from tests.helpers import wait_for
from tests.integration.test_alerts import Host, Receiver, Rules, rule_spec

PARTITIONS = 4


def hosts_over_every_partition(per_partition: int = 2) -> list[str]:
    """Host ids that put `per_partition` hosts on each partition (keys hash where they hash)."""
    out: dict[int, list[str]] = {p: [] for p in range(PARTITIONS)}
    i = 0
    while any(len(v) < per_partition for v in out.values()):
        h = f"web-{i}"
        if len(out[partition_for(h, PARTITIONS)]) < per_partition:
            out[partition_for(h, PARTITIONS)].append(h)
        i += 1
    return [h for v in out.values() for h in v]


def bus_settings(request: pytest.FixtureRequest, backend: str) -> dict[str, Any]:
    if backend == "kafka":
        return {"bus_url": request.getfixturevalue("kafka_url"), "bus_topic_prefix":
                request.getfixturevalue("kafka_prefix"), "bus_partitions": PARTITIONS, "bus_session_timeout": "1500ms"}
    return {"bus_redis_shards": PARTITIONS, "bus_session_timeout": "1500ms"}


@pytest.mark.parametrize("backend", ["kafka", "redis"])
async def test_replicas_share_hosts_notify_once_and_take_over_on_a_stop(
    start_aggregator: AggregatorFactory, pg_dsn: str, redis_url: str, pool: asyncpg.Pool, backend: str,
    request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture,
) -> None:
    bus = bus_settings(request, backend)
    agg = await start_aggregator(**bus)
    receiver = await Receiver().start()
    rules = Rules(agg)
    # max over a minute: a host that went back to 0.5 still fires while its 0.95 is in the window,
    # which a new owner knows only if it refilled the window from the hot tier.
    await rules.apply("root-full", rule_spec(receiver.url, aggregation="max", window="1m"))
    replicas: list[tuple[AlertsService, asyncio.Task[None]]] = []
    for n in range(2):
        svc = AlertsService(AlertsSettings(aggregator=agg.address, listen="", tick="100ms", no_data_after="0s",
                                           retry_initial="100ms", consumer=f"alerts-{n}", **bus),
                            postgres_url=pg_dsn, redis_url=redis_url)
        replicas.append((svc, asyncio.create_task(svc.run())))
    a, b = replicas[0][0], replicas[1][0]
    names = hosts_over_every_partition()
    hosts = [Host(agg, h) for h in names]
    try:
        await wait_for(lambda: a._owned and b._owned and a._owned | b._owned == set(range(PARTITIONS))
                       and not a._owned & b._owned, within=60, message="the two replicas sharing the partitions")
        await wait_for(lambda: "root-full" in a.state.rules and "root-full" in b.state.rules, message="rule loaded")
        for h in hosts:
            await h.__aenter__()
        for h in hosts:
            await h.send(0.95)
        await wait_for(lambda: len(receiver.alerts()) >= len(names), within=30, message="every host's alert fired")
        # Each host's alert is held by its owner alone, and was notified once.
        held = {n: {x.host_id for x in svc.state.alerts.values()} for n, svc in (("a", a), ("b", b))}
        assert held["a"]
        assert held["b"]
        assert not held["a"] & held["b"]
        assert held["a"] | held["b"] == set(names)
        assert all(a.owns(h) for h in held["a"])
        assert all(b.owns(h) for h in held["b"])

        # b stops: a takes its hosts over.
        moved = sorted(held["b"])
        b.stop()
        await asyncio.wait_for(replicas[1][1], 30)
        await wait_for(lambda: a._owned == set(range(PARTITIONS)) and len(a.state.alerts) == len(names),
                       within=30, message="the other replica owning every host, with their alerts")
        for h in hosts:
            await h.send(0.5)

        def evaluated_twice() -> bool:
            # The new sample joined the window refilled from the hot tier (which had the 0.95).
            ids = {s.host.id: s for s in a.state.series.values() if s.rules}
            return all(h in ids and len(ids[h].times) >= 2 for h in moved)

        await wait_for(evaluated_twice, within=30, message="the moved hosts' windows refilled and evaluated")
        await wait_for(lambda: a._queue.empty() and not a._step.locked(), message="the step stored")
        assert await pool.fetchval("SELECT count(*) FROM alert_history WHERE state = 'resolved'") == 0
        assert "resolved" not in receiver.statuses()
        assert {x.host_id for x in a.state.alerts.values()} == set(names)
        # Once each, across both replicas and the handover.
        assert Counter(x["labels"]["host"] for x in receiver.alerts()) == dict.fromkeys(names, 1)
        # Rebalances are routine: no part of either replica failed and restarted over them.
        assert not [r for r in caplog.records if "failed; restarting" in r.getMessage()]
        firing = await pool.fetch("SELECT host_id, count(*) AS n FROM alert_history WHERE state = 'firing' "
                                  "GROUP BY host_id")
        assert {r["host_id"]: r["n"] for r in firing} == dict.fromkeys(names, 1)
    finally:
        for h in hosts:
            with contextlib.suppress(Exception):
                await h.__aexit__(None, None, None)
        for svc, task in replicas:
            svc.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 30)
        await rules.channel.close()
        await receiver.stop()


async def _leaseholders(redis_url: str) -> dict[int, str | None]:
    r = aioredis.from_url(redis_url)
    try:
        values = await r.mget([f"bus-leases:samples:alerts:lease:{p}" for p in range(PARTITIONS)])
    finally:
        await r.aclose()
    return {p: holder_of(v) for p, v in enumerate(values)}


async def test_on_redis_a_replica_paused_past_its_lease_does_not_act_on_the_shards_it_lost(
    start_aggregator: AggregatorFactory, pg_dsn: str, redis_url: str, pool: asyncpg.Pool, tmp_path: Path,
) -> None:
    """A replica stopped (SIGSTOP) past its lease: the other takes its shards over, and when it runs
    again it neither reads those shards nor stores or notifies anything for them: every
    transition is notified once, by whoever held the shard when it happened."""
    bus: dict[str, Any] = {"bus_redis_shards": PARTITIONS, "bus_session_timeout": "1500ms"}
    agg = await start_aggregator(**bus)
    receiver = await Receiver().start()
    rules = Rules(agg)
    await rules.apply("root-full", rule_spec(receiver.url))  # the last sample decides: 0.95 fires, 0.5 resolves
    a = AlertsService(AlertsSettings(aggregator=agg.address, listen="", tick="100ms", no_data_after="0s",
                                     retry_initial="100ms", consumer="alerts-a", **bus),
                      postgres_url=pg_dsn, redis_url=redis_url)
    a_task = asyncio.create_task(a.run())
    env = {**os.environ, "SYSMON_POSTGRES_URL": pg_dsn, "SYSMON_REDIS_URL": redis_url,
           "SYSMON_AGGREGATOR": agg.address, "SYSMON_CONSUMER": "alerts-b", "SYSMON_LISTEN": "",
           "SYSMON_TICK": "100ms", "SYSMON_NO_DATA_AFTER": "0s", "SYSMON_RETRY_INITIAL": "100ms",
           "SYSMON_BUS_REDIS_SHARDS": str(PARTITIONS), "SYSMON_BUS_SESSION_TIMEOUT": "1500ms"}
    log_path = tmp_path / "alerts-b.log"
    with log_path.open("wb") as log_file:
        b = await asyncio.create_subprocess_exec(sys.executable, "-m", "sysmon", "alerts", env=env, stdout=log_file,
                                                 stderr=subprocess.STDOUT)
    names = hosts_over_every_partition()
    hosts = [Host(agg, h) for h in names]
    try:
        async def shared() -> bool:
            held = await _leaseholders(redis_url)
            return (a._owned is not None and bool(a._owned) and len(a._owned) < PARTITIONS
                    and {held[p] for p in a._owned} == {"alerts-a"}
                    and {held[p] for p in range(PARTITIONS) if p not in a._owned} == {"alerts-b"})

        await wait_for(shared, within=60, message="the two replicas sharing the shards")
        b_shards = set(range(PARTITIONS)) - set(a._owned or ())
        b_hosts = {h for h in names if partition_for(h, PARTITIONS) in b_shards}
        for h in hosts:
            await h.__aenter__()
        for h in hosts:
            await h.send(0.95)
        await wait_for(lambda: len(receiver.alerts()) >= len(names), within=30, message="every host's alert fired")

        b.send_signal(signal.SIGSTOP)  # paused, its leases held in Redis until they run out
        # At once, b's hosts first: the read b had blocked at Redis when it stopped takes these, and
        # they wait in its socket (and pending under the shard's consumer, for the next owner).
        for h in sorted(hosts, key=lambda h: h.host_id not in b_hosts):
            await h.send(0.5)
        await wait_for(lambda: a._owned == set(range(PARTITIONS)), within=30,
                       message="the running replica owning every shard")
        await wait_for(lambda: receiver.statuses().count("resolved") >= len(names), within=30,
                       message="every alert resolved by the running replica")

        b.send_signal(signal.SIGCONT)
        # b wakes with its alerts still firing in memory and a read perhaps in flight: it must find its
        # leases gone, drop what it holds, and come back only through a rebalance (restored from PostgreSQL).
        await wait_for(lambda: "lost shard" in log_path.read_text(), within=30, message="b seeing its leases gone")
        await wait_for(shared, within=60, message="the replicas sharing the shards again")
        for h in hosts:
            await h.send(0.5)
        await wait_for(lambda: all(len(s.times) >= 2 for s in a.state.series.values()
                                   if s.rules and s.host.id not in b_hosts and a.owns(s.host.id)),
                       within=30, message="the running replica evaluating its hosts again")

        async def streams_handled() -> bool:
            r = aioredis.from_url(redis_url)
            try:
                for p in range(PARTITIONS):
                    key = shard_key("samples", p)
                    if (await r.xpending(key, "alerts"))["pending"]:
                        return False
                    group = {g["name"]: g for g in await r.xinfo_groups(key)}[b"alerts"]
                    if group["last-delivered-id"] != (await r.xinfo_stream(key))["last-generated-id"]:
                        return False
                return True
            finally:
                await r.aclose()

        await wait_for(streams_handled, within=30, message="every shard read and acknowledged")
        await wait_for(lambda: a._queue.empty() and not a._step.locked(), message="the step stored")
        # Once each: fired once, resolved once, across the pause, the take-over and the hand-back.
        per_host = Counter((x["labels"]["host"], x["status"]) for x in receiver.alerts())
        assert per_host == {(h, s): 1 for h in names for s in ("firing", "resolved")}
        rows = await pool.fetch("SELECT state, count(*) AS n FROM alert_history GROUP BY state")
        assert {r["state"]: r["n"] for r in rows} == {"firing": len(names), "resolved": len(names)}
        assert b.returncode is None  # b carried on after losing its leases, it did not crash
    finally:
        with contextlib.suppress(ProcessLookupError):
            b.send_signal(signal.SIGCONT)
            b.terminate()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(b.wait(), 30)
        if b.returncode is None:
            b.kill()
            await b.wait()
        for h in hosts:
            with contextlib.suppress(Exception):
                await h.__aexit__(None, None, None)
        a.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(a_task, 30)
        await rules.channel.close()
        await receiver.stop()
