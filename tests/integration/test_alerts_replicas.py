"""Two alerts replicas on the Kafka bus share the fleet by host: the consumer group gives each
some partitions of the samples topic, each evaluates only the hosts keyed to them, and every
alert is notified once. When one replica stops, the other takes its hosts over with their
alerts from PostgreSQL and their windows from the hot tier, as after a restart."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import Any

import asyncpg
import pytest

from sysmon.alerts.service import AlertsService
from sysmon.core.bus.kafka import partition_for
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


async def test_replicas_share_hosts_notify_once_and_take_over_on_a_stop(
    start_aggregator: AggregatorFactory, pg_dsn: str, redis_url: str, pool: asyncpg.Pool, kafka_url: str,
    kafka_prefix: str, caplog: pytest.LogCaptureFixture,
) -> None:
    bus: dict[str, Any] = {"bus_url": kafka_url, "bus_topic_prefix": kafka_prefix, "bus_partitions": PARTITIONS,
                           "bus_session_timeout": "1500ms"}
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
