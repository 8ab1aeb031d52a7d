"""Real Prometheus 2.42 scraping a small exporter and remote-writing to sysmon: the samples land as
Prometheus stores them, counters marked as such, and survive an aggregator restart (Prometheus
keeps them in its WAL and sends them again)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import asyncpg
import pytest
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from sysmon.core.embedded import free_port
from tests.helpers import wait_for
from tests.prometheus_helpers import running_prometheus
from tests.remote_write_helpers import stored

pytestmark = pytest.mark.slow


class Demo:
    """An exporter whose values move with every scrape: a counter of 3 per scrape, a gauge going round."""

    def __init__(self) -> None:
        self.scrapes = 0
        self.lock = threading.Lock()

    def collect(self):
        with self.lock:
            self.scrapes += 1
            n = self.scrapes
        c = CounterMetricFamily("demo_requests", "requests served", labels=["code"])
        c.add_metric(["200"], 3.0 * n)
        yield c
        g = GaugeMetricFamily("demo_temperature_celsius", "a temperature")
        g.add_metric([], 20.0 + (n % 7) * 0.5)
        yield g


@pytest.fixture
def exporter():
    registry = CollectorRegistry()
    registry.register(Demo())
    server, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


async def test_prometheus_remote_writes_to_sysmon_through_a_restart(start_aggregator, pg_dsn: str, short_dir: Path,
                                                                     exporter: int) -> None:
    rw_port = free_port()
    agg = await start_aggregator(http_listen=f"127.0.0.1:{rw_port}")
    target = f"127.0.0.1:{exporter}"
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1m"},
        "scrape_configs": [{"job_name": "demo", "static_configs": [{"targets": [target]}]}],
        "remote_write": [{
            "url": f"http://127.0.0.1:{rw_port}/api/v1/write",
            "queue_config": {"batch_send_deadline": "500ms", "min_backoff": "100ms", "max_backoff": "1s",
                             "retry_on_http_429": True},
            "metadata_config": {"send_interval": "2s"},
        }],
    }
    counter = ("127.0.0.1", "demo_requests_total", {"job": "demo", "instance": target, "code": "200"})
    gauge = ("127.0.0.1", "demo_temperature_celsius", {"job": "demo", "instance": target})
    with running_prometheus(short_dir / "prom", config) as prom:
        async def landed(n: int) -> list[tuple[int, float]] | None:
            got = await stored(pg_dsn, *counter)
            return got if len(got) >= n else None

        first = await wait_for(lambda: landed(3), within=60, message=f"3 samples in sysmon\n{prom.log_tail()}")

        # The aggregator goes away; Prometheus goes on scraping, and retrying what it cannot send.
        await agg.stop(grace=0.5)
        down_from = first[-1][0]

        def scraped_while_down() -> bool:
            return sum(t > down_from for t, _ in prom.raw_samples('demo_requests_total{code="200"}')) >= 4

        await wait_for(lambda: asyncio.to_thread(scraped_while_down), within=60, interval=0.5,
                       message="Prometheus scraping while sysmon is down")
        await start_aggregator(http_listen=f"127.0.0.1:{rw_port}")
        theirs = await asyncio.to_thread(prom.raw_samples, 'demo_requests_total{code="200"}')
        until = theirs[-1][0]

        async def caught_up() -> list[tuple[int, float]] | None:
            got = await stored(pg_dsn, *counter)
            return got if got and got[-1][0] >= until else None

        ours = await wait_for(caught_up, within=60, message=f"the samples of the outage in sysmon\n{prom.log_tail()}")
        # Every sample Prometheus stored, from the first sysmon saw, through the outage: same times, same values.
        expected = [(t, v) for t, v in theirs if t >= ours[0][0]]
        assert [(t, v) for t, v in ours if t <= until] == expected
        assert sum(t > down_from for t, _ in expected) >= 4
        assert [v for _, v in expected] == sorted(v for _, v in expected)  # a counter: only grows

        gauge_theirs = await asyncio.to_thread(prom.raw_samples, "demo_temperature_celsius")
        gauge_ours = {t: v for t, v in await stored(pg_dsn, *gauge)}
        matched = [(t, v) for t, v in gauge_theirs if t in gauge_ours]
        assert len(matched) >= len(expected) - 2
        assert all(gauge_ours[t] == v for t, v in matched)

    conn = await asyncpg.connect(pg_dsn)
    kinds = dict(await conn.fetch("SELECT name, kind FROM series WHERE host_id = '127.0.0.1'"))
    await conn.close()
    assert kinds["demo_requests_total"] == 3  # counter
    assert kinds["demo_temperature_celsius"] == 1  # gauge
    assert kinds["up"] == 1
