"""The platform on the Kafka bus: aggregator, alerts and gateway all given SYSMON_BUS_URL=kafka://...
(tansu here, or SYSMON_TEST_KAFKA's Kafka); a real collector's samples reach the alerts service,
whose rule fires to a webhook, and the gateway's live stream, with the alert on it too."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import asyncpg

from sysmon.alerts.service import AlertsService
from sysmon.core.hot import HotTier
from sysmon.core.settings import AlertsSettings
from tests.conftest import AggregatorFactory
from tests.gateway_helpers import live_reader, running_gateway, two_gateways_serve_every_host
from tests.helpers import running_collector, wait_for
from tests.integration.test_alerts import Receiver, Rules


def kafka(kafka_url: str, kafka_prefix: str) -> dict[str, Any]:
    # A short session: tansu keeps a stopped member's partitions until its session expires.
    return {"bus_url": kafka_url, "bus_topic_prefix": kafka_prefix, "bus_partitions": 4,
            "bus_session_timeout": "1500ms"}


async def test_a_collectors_samples_reach_alerts_and_the_live_stream_over_kafka(
    start_aggregator: AggregatorFactory, pg_dsn: str, redis_url: str, pool: asyncpg.Pool, kafka_url: str,
    kafka_prefix: str,
) -> None:
    bus = kafka(kafka_url, kafka_prefix)
    agg = await start_aggregator(**bus)
    receiver = await Receiver().start()
    rules = Rules(agg)
    svc = AlertsService(AlertsSettings(aggregator=agg.address, listen="", tick="100ms", no_data_after="0s",
                                       retry_initial="100ms", **bus), postgres_url=pg_dsn, redis_url=redis_url)
    task = asyncio.create_task(svc.run())
    try:
        await rules.apply("up", {
            "metric": "system.uptime", "condition": {"op": ">", "threshold": 0},
            "annotations": {"summary": "{{ host }} is up"}, "actions": [{"webhook": {"url": f"{receiver.url}/hook"}}],
        })
        await wait_for(svc.ready.is_set, within=30, message="alerts ready on the Kafka bus")
        await wait_for(lambda: "up" in svc.state.rules, message="rule loaded")
        async with running_gateway(pg_dsn, redis_url, **bus) as gw, live_reader(gw) as live:
            await wait_for(lambda: live.of("hello"), message="hello")
            async with running_collector(agg.address, host_id="kafka-host-1"):
                async def known() -> bool:
                    return (await gw.http.get("/api/v1/hosts/kafka-host-1")).status_code == 200

                await wait_for(known, message="the collector's host known")
                await live.subscribe(hosts=["kafka-host-1"], metrics=["system.uptime"], events=["alerts"])
                samples = await wait_for(
                    lambda: [f for f in live.of("samples") if f["host"] == "kafka-host-1"][1:], within=30,
                    message="live samples of the collector through Kafka")
                assert samples[0]["series"][0]["metric"] == "system.uptime"
                alerts = await wait_for(lambda: receiver.alerts(), within=30, message="the rule's webhook")
                assert alerts[0]["status"] == "firing"
                assert alerts[0]["labels"]["host"] == "kafka-host-1"
                assert alerts[0]["annotations"] == {"summary": "kafka-host-1 is up"}
                # The transitions the alerts service published on Kafka reach the live stream too.
                frame = (await wait_for(lambda: [f for f in live.of("alert") if f["state"] == "firing"], within=30,
                                        message="the firing alert on the live stream"))[0]
                assert (frame["rule"], frame["host"]) == ("up", "kafka-host-1")
        assert await pool.fetchval("SELECT count(*) FROM alert_notifications WHERE status = 'firing'") == 1
    finally:
        svc.stop()
        await asyncio.wait_for(task, 30)
        await rules.channel.close()
        await receiver.stop()


async def test_with_kafka_away_the_hot_tier_stays_live_and_storage_goes_on(
    start_aggregator: AggregatorFactory, redis_client: Any, pool: asyncpg.Pool, short_dir: Path,
) -> None:
    """The brokers go away under a running aggregator: publishes give up after their timeout
    (counted as hot tier / bus failures), the hot tier keeps the hosts' latest samples, and
    PostgreSQL stores everything, as when Redis is away."""
    from tests.kafka_broker import TansuBroker

    broker = TansuBroker(short_dir / "tansu.log")
    await asyncio.to_thread(broker.start)
    try:
        agg = await start_aggregator(bus_url=broker.url, bus_topic_prefix="away.", bus_partitions=2)
        hot = HotTier(redis_client)
        async with running_collector(agg.address, host_id="kafka-away-1"):
            await wait_for(lambda: agg.bus is not None and "samples" in agg.bus._ready, within=30,  # type: ignore[attr-defined]
                           message="publishing on Kafka")
            await asyncio.to_thread(broker.stop)
            stopped = time.time() * 1000

            async def hot_after_stop() -> bool:
                seen = await hot.hosts_last_seen()
                return seen.get("kafka-away-1", 0) > stopped + 6000  # past a publish timeout or more

            await wait_for(hot_after_stop, within=30, message="the hot tier fed with Kafka away")
            # And fed as the samples come (every 200 ms), not only between the bus's timeouts.
            for _ in range(10):
                await asyncio.sleep(0.5)
                newest = (await hot.hosts_last_seen())["kafka-away-1"]
                assert time.time() * 1000 - newest < 3000

            async def stored_after_stop() -> bool:
                n = await pool.fetchval(
                    "SELECT count(*) FROM samples_raw r JOIN series s USING (series_id) "
                    "WHERE s.host_id = 'kafka-away-1' AND r.ts > to_timestamp($1 / 1000.0)", stopped + 6000)
                return n > 0

            await wait_for(stored_after_stop, within=30, message="samples stored with Kafka away")
            # Back (empty, as tansu restarts): publishing resumes, topics made again.
            await asyncio.to_thread(broker.start)
            await wait_for(lambda: agg.bus is not None and "samples" in agg.bus._ready, within=30,  # type: ignore[attr-defined]
                           message="publishing on Kafka again")
    finally:
        await asyncio.to_thread(broker.stop)


async def test_two_gateways_serve_the_same_live_stream_over_kafka(
    start_aggregator: AggregatorFactory, pg_dsn: str, redis_url: str, kafka_url: str, kafka_prefix: str,
) -> None:
    """Gateways scale out: each reads every partition from the end (no consumer group), so a
    dashboard on either replica sees every host."""
    bus = kafka(kafka_url, kafka_prefix)
    agg = await start_aggregator(**bus)
    # Over more than one of the 4 partitions.
    await two_gateways_serve_every_host(agg.address, pg_dsn, redis_url, [f"kafka-gw-{i}" for i in range(4)], **bus)
