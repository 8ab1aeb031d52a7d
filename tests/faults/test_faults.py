"""Fault scenarios against the real processes, one after the other on one platform.

Each scenario breaks one part while three collectors (and the probe host) sample every second, then
judges what the difference in counts and notifications says: nothing lost, nothing stored twice,
no notification twice, no false SysmonNoData; and prints one line with its figures
(`.venv/bin/python -m pytest tests/faults -s`; RELIABILITY.md has the table).

The order is chosen so that a scenario's own damage would not fall on the next: Redis restarted empty
comes last, because what it left behind before it was fixed (a hot tier without series descriptions
until the aggregator described them again, every 10 minutes) also starved an alerts service restarted
after it: its windows and its descriptions of series come from the hot tier.
Every scenario flips the probe's value once, so exactly one probe notification must follow it.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator

import pytest

from tests.faults.harness import (
    AGENT_HOSTS,
    INTERVAL_S,
    PROBE_HOST,
    PROBE_RULE,
    Count,
    Note,
    Platform,
    Scenario,
    notes,
    seconds_until,
)
from tests.helpers import wait_for

pytestmark = pytest.mark.slow

AGGREGATOR_OUTAGE_S = 5.0
POSTGRES_OUTAGE_S = 60.0
FREEZE_S = 40.0
REDIS_OUTAGE_S = 15.0
# "Within one collector interval or so": a tick, the reconnect to Redis, and scheduling slack.
HOT_TIER_WITHIN_S = 3 * INTERVAL_S


@pytest.fixture(scope="module")
async def platform() -> AsyncIterator[Platform]:
    p = Platform()
    try:
        await p.start()
        yield p
    finally:
        await p.stop()


async def test_aggregator_killed_and_restarted(platform: Platform) -> None:
    p = platform
    agg = p.procs["aggregator"]
    async with Scenario(p, "1 aggregator SIGKILL") as sc:
        killed = agg.kill()
        await asyncio.sleep(AGGREGATOR_OUTAGE_S / 2)
        expected = p.flip_probe()  # buffered by the probe, replayed on reconnect
        await asyncio.sleep(AGGREGATOR_OUTAGE_S / 2)
        back = agg.start()
        sc.result.outage_s = back - killed
        sc.result.recovery_what = "restart -> every collector has a new batch committed"
        sc.result.recovery_s = await p.new_commits(back)
        sc.result.timing("drained", await seconds_until(p.drained, back, 90))
        await sc.expect_probe(expected)
        await sc.finish()
    sc.verdict("aggregator", "alerts", *AGENT_HOSTS)


async def test_postgres_stopped_for_a_minute(platform: Platform) -> None:
    p = platform
    async with Scenario(p, "2 PostgreSQL stopped") as sc:
        await asyncio.to_thread(p.pg.stop)
        stopped = time.monotonic()
        await asyncio.sleep(POSTGRES_OUTAGE_S / 2)
        # The transition happens while PostgreSQL is away: the alerts service cannot store it yet.
        expected = p.flip_probe()
        await asyncio.sleep(POSTGRES_OUTAGE_S / 2)
        dsn = await asyncio.to_thread(p.pg.start)
        back = time.monotonic()
        assert dsn == p.dsn
        sc.result.outage_s = back - stopped
        sc.result.recovery_what = "PostgreSQL up -> every collector has a new batch committed"
        sc.result.recovery_s = await p.new_commits(back)
        sc.result.timing("drained", await seconds_until(p.drained, back, 90))
        await sc.expect_probe(expected)
        await sc.finish()
    sc.verdict("aggregator", "alerts", *AGENT_HOSTS)


async def test_alerts_killed_while_firing_and_while_a_resolve_is_pending(platform: Platform) -> None:
    p = platform
    alerts = p.procs["alerts"]
    if not p.probe_sampler.value:  # run alone: make the probe fire first
        p.flip_probe()
        await wait_for(lambda: [n.status for n in _probe_notes(p)][-1:] == ["firing"], within=30,
                       message="the probe fires")
    async with Scenario(p, "5 alerts SIGKILL (firing; resolve pending)") as sc:
        # a) Killed while the probe's alert fires (delivered long ago): the restarted service must not
        #    send it again, once it has caught up with the bus.
        killed = alerts.kill()
        back = alerts.start()
        outage = back - killed
        sc.result.timing("ready after kill", await seconds_until(p.alerts_ready, back, 60))
        caught_up = await seconds_until(p.alerts_caught_up, back, 60)
        if sc.result.timing("caught up", caught_up) is None:
            sc.problem("the restarted alerts service did not catch up with the bus within 60s")
        # b) The resolve happens in the data while the service is frozen (so it is neither evaluated
        #    nor delivered), then the service dies: the restarted one must deliver it exactly once.
        frozen = alerts.signal(signal.SIGSTOP)
        flipped_ms = time.time_ns() // 1_000_000
        expected = p.flip_probe()
        await wait_for(lambda: p.probe_published(p.probe_sampler.value, flipped_ms), within=15, interval=0.2,
                       message="the probe's resolving sample on the bus")
        alerts.kill()
        back = alerts.start()
        sc.result.outage_s = outage + back - frozen
        sc.result.timing("ready after kill", await seconds_until(p.alerts_ready, back, 60))
        await sc.expect_probe(expected)
        sc.result.recovery_what = "restart -> the pending resolve delivered"
        delivered = [n.at for n in _probe_notes(p) if n.at >= back and n.status == expected]
        sc.result.recovery_s = delivered[0] - back if delivered else None
        await sc.finish()
    sc.verdict("alerts")


def _probe_notes(p: Platform) -> list[Note]:
    return [n for n in notes(p.receiver) if n.alertname == PROBE_RULE]


async def test_collector_restarted_gracefully(platform: Platform) -> None:
    p = platform
    host = AGENT_HOSTS[-1]
    proc = p.procs[host]
    async with Scenario(p, "6 collector SIGTERM, restarted") as sc:
        # Stop it just after a sample, when that batch is most likely still in flight; the next
        # sample is an interval away, so the count read now is the session's last.
        base = await p.agent(host)
        assert base is not None
        last = base

        async def sampled() -> bool:
            nonlocal last
            s = await p.agent(host)
            if s is not None and s.batches > base.batches:
                last = s
                return True
            return False

        await wait_for(sampled, within=5, interval=0.02, message=f"{host} samples")
        stopped = proc.signal(signal.SIGTERM)

        async def exited() -> bool:
            nonlocal last
            s = await p.agent(host)
            if s is not None and s.batches >= last.batches:
                last = s
            return not proc.alive

        await wait_for(exited, within=15, interval=0.02, message=f"{host} exits on SIGTERM")
        sc.result.timing("exit", time.monotonic() - stopped)
        if proc.popen is not None and proc.popen.returncode != 0:
            sc.problem(f"{host} exited with {proc.popen.returncode} on SIGTERM")
        p.closed[host].append(Count(last.batches, last.samples))
        expected = p.flip_probe()
        back = proc.start()
        sc.result.outage_s = back - stopped
        sc.result.recovery_what = "start -> the new session's first batch committed"
        sc.result.recovery_s = await seconds_until(lambda: _acked(p, host), back, 60)
        await sc.expect_probe(expected)
        await sc.finish()
    sc.verdict(host, "aggregator")


async def _acked(p: Platform, host: str) -> bool:
    s = await p.agent(host)
    return s is not None and s.acked > 0


async def test_aggregator_frozen(platform: Platform) -> None:
    p = platform
    agg = p.procs["aggregator"]
    async with Scenario(p, "4 aggregator SIGSTOP") as sc:
        base = await p.agents()
        frozen = agg.signal(signal.SIGSTOP)
        # The freeze is the scenario; meanwhile, watch for each collector noticing (its session
        # ended: not connected, or a connection failure counted).
        noticed: dict[str, float] = {}
        expected = ""
        while (now := time.monotonic()) < frozen + FREEZE_S:
            if not expected and now >= frozen + FREEZE_S / 2:
                expected = p.flip_probe()
            for h, s in (await p.agents()).items():
                b = base.get(h)
                if h not in noticed and s is not None and b is not None and (
                        not s.connected or s.failures > b.failures):
                    noticed[h] = now - frozen
            await asyncio.sleep(0.5)
        back = agg.signal(signal.SIGCONT)
        sc.result.outage_s = back - frozen
        missed = sorted(set(base) - set(noticed))
        sc.result.figures["noticed"] = (f"{max(noticed.values()):.1f}s" if noticed else "never") + (
            f" ({len(noticed)}/{len(base)})" if missed else "")
        if missed:
            sc.problem(f"collectors that never noticed the frozen aggregator in {FREEZE_S:g}s: {missed}")
        sc.result.recovery_what = "SIGCONT -> every collector connected, with a new batch committed"
        committed = await p.new_commits(back)
        connected = await seconds_until(p.all_connected, back, 60)
        sc.result.recovery_s = None if committed is None or connected is None else max(committed, connected)
        sc.result.timing("drained", await seconds_until(p.drained, back, 90))
        await sc.expect_probe(expected)
        await sc.finish(fleet_silent=True)
    sc.verdict("aggregator", "alerts", *AGENT_HOSTS)


async def test_redis_killed_and_restarted_empty(platform: Platform) -> None:
    p = platform
    async with Scenario(p, "3 Redis SIGKILL, restarted empty") as sc:
        base = await p.agents()
        killed = p.kill_redis(empty=True)
        await asyncio.sleep(REDIS_OUTAGE_S / 2)
        expected = p.flip_probe()  # stored in PostgreSQL only; the bus is gone
        await asyncio.sleep(REDIS_OUTAGE_S / 2)
        during = await p.agents()
        back = await p.start_redis()
        back_ms = time.time_ns() // 1_000_000
        sc.result.outage_s = back - killed
        stalled = sorted(h for h, s in during.items() if s is None or base.get(h) is None or s.acked <= base[h].acked)
        if stalled:
            sc.problem(f"PostgreSQL stored nothing of {stalled} while Redis was away")
        sc.result.recovery_what = "Redis up -> hot tier whole: query + hosts up"
        whole = await seconds_until(lambda: p.hot_tier_whole(back_ms), back, 20)
        sc.result.recovery_s = whole
        if whole is None or whole > HOT_TIER_WITHIN_S:
            sc.problem(f"the hot tier was not whole {HOT_TIER_WITHIN_S:g}s after Redis came back "
                       f"({'not even after 20s' if whole is None else f'{whole:.1f}s'}): "
                       f"{await _hot_tier_view(p)}; Redis keys {await p.redis_keys()}")
        await sc.expect_probe(expected)
        await sc.finish(fleet_silent=True)
    sc.verdict("aggregator", "alerts", "gateway")


async def _hot_tier_view(p: Platform) -> str:
    r = await p._get(f"{p.gateway_url}/api/v1/query?metric=system.uptime&start=now-2m")
    series = "no answer" if r is None else (
        f"HTTP {r.status_code}" if r.status_code != 200 else
        f"tier {r.json()['tier']}, series of {sorted({s['host'] for s in r.json()['series']})}")
    r = await p._get(f"{p.gateway_url}/api/v1/hosts")
    hosts = "no answer" if r is None or r.status_code != 200 else {
        h["host"]: h["status"] for h in r.json()["hosts"] if h["host"] in (*AGENT_HOSTS, PROBE_HOST)}
    return f"query: {series}; hosts: {hosts}"
