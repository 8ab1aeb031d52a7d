"""The dashboard in a real browser (Debian's Chromium driven by Playwright) against the real stack:
aggregator, collectors, PostgreSQL, Redis and the gateway. Screenshots go to test-artifacts/."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from playwright.async_api import Browser, Page, async_playwright, expect

from sysmon.core import bus as busmod
from sysmon.pb.v1 import events_pb2
from tests.gateway_helpers import Gateway, running_gateway, write_history
from tests.helpers import running_collector, wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
LAPTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}
PANELS = ["cpu-total", "cpu-cores", "load", "memory", "swap", "filesystems", "disk", "network"]


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():  # noqa: ASYNC240 - once per session
        pytest.fail("Debian's chromium is missing: `make test` installs it (apt-get install chromium)")
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        await b.close()


@pytest.fixture
async def stack(start_aggregator, pg_dsn: str, redis_url: str) -> AsyncIterator[Gateway]:
    """Two live collectors, one host with only an hour-old history, and the gateway."""
    agg = await start_aggregator()
    await write_history(agg.address, "old-box", hours=1, every_s=60, until_s_ago=300)
    async with running_gateway(pg_dsn, redis_url) as gw, \
            running_collector(agg.address, host_id="e2e-web", labels={"env": "prod", "team": "web"}), \
            running_collector(agg.address, host_id="e2e-db", labels={"env": "staging"}):
        async def ready() -> bool:
            hosts = (await gw.http.get("/api/v1/hosts")).json()["hosts"]
            up = {h["host"] for h in hosts if h["status"] == "up"}
            return {"e2e-web", "e2e-db"} <= up
        await wait_for(ready, within=30, message="both collectors up")
        yield gw


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport=LAPTOP)
    pg = await context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    await context.close()
    assert not errors, f"JavaScript errors: {errors}"


async def shot(page: Page, name: str, *, full_page: bool = True) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=full_page)


async def test_overview_shows_every_host_trouble_first_and_filters_by_label(stack: Gateway, page: Page) -> None:
    await page.goto(stack.url)
    tiles = page.locator(".tile")
    await expect(tiles).to_have_count(3)
    # old-box has sent nothing for five minutes: down, and so first.
    await expect(tiles.first).to_have_attribute("data-host", "old-box")
    await expect(tiles.first.locator(".badge")).to_have_text("down")
    web = page.locator('.tile[data-host="e2e-web"]')
    await expect(web.locator(".badge")).to_have_text("up")
    await expect(web.locator(".chip")).to_have_text(["env=prod", "team=web"])
    await expect(web.locator(".spark canvas")).to_have_count(4)
    for spark in ("cpu", "mem", "disk", "net"):  # drawn: a line needs two points
        await expect(web.locator(f'[data-spark="{spark}"] .chart')).to_have_attribute(
            "data-points", re.compile(r"^([2-9]|\d\d+)$"))
    await expect(web.locator('[data-spark="mem"] .v')).to_have_text(re.compile(r"^\d+\.\d%$"))
    await expect(page.locator("#summary")).to_contain_text("3 of 3 hosts")
    await expect(page.locator("#alerts-panel")).to_contain_text("Nothing firing or pending")
    await shot(page, "overview-laptop")

    await page.fill("#filter", "env=prod")
    await expect(tiles).to_have_count(1)
    await expect(tiles.first).to_have_attribute("data-host", "e2e-web")
    await page.fill("#filter", "e2e")
    await expect(tiles).to_have_count(2)
    await page.fill("#filter", "")

    await page.set_viewport_size(PHONE)
    await expect(tiles).to_have_count(3)
    box = await web.bounding_box()
    assert box is not None
    assert box["width"] <= PHONE["width"], "a tile is wider than the phone's screen"
    await shot(page, "overview-phone")

    await web.click()
    await expect(page).to_have_url(f"{stack.url}#/host/e2e-web")
    await expect(page.locator("#host-name")).to_have_text("e2e-web")


async def test_host_view_draws_every_panel_with_units_and_tooltips(stack: Gateway, page: Page) -> None:
    await page.goto(f"{stack.url}#/host/e2e-web?range=1h")
    for panel in PANELS:
        fig = page.locator(f'[data-panel="{panel}"]')
        await expect(fig.locator("canvas")).to_have_count(1)
        await expect(fig.locator(".panel-tier")).to_have_text("raw · 10s")
    # Points drawn in the panels every Linux host has.
    for panel in ("cpu-total", "cpu-cores", "load", "memory", "filesystems"):
        await expect(page.locator(f'[data-panel="{panel}"] .chart')).not_to_have_attribute("data-points", "0")
    await expect(page.locator('[data-panel="memory"] .u-legend')).to_contain_text("used")
    await expect(page.locator("#host-status")).to_have_text("up")
    await expect(page.locator(".stat").first).to_contain_text("%")

    # Hovering a chart shows the exact values with units.
    over = page.locator('[data-panel="memory"] .u-over')
    box = await over.bounding_box()
    assert box is not None
    await page.mouse.move(box["x"] + box["width"] - 3, box["y"] + box["height"] / 2)
    tip = page.locator('[data-panel="memory"] .tooltip')
    await expect(tip).to_be_visible()
    await expect(tip).to_contain_text("used")
    await expect(tip).to_contain_text("iB")
    await shot(page, "host-laptop")

    await page.set_viewport_size(PHONE)
    await page.mouse.move(0, 0)
    fig_box = await page.locator('[data-panel="cpu-total"]').bounding_box()
    assert fig_box is not None
    assert fig_box["width"] <= PHONE["width"], "a panel is wider than the phone's screen"
    await shot(page, "host-phone", full_page=False)


async def test_live_mode_appends_a_new_point_without_refetching(stack: Gateway, page: Page) -> None:
    queries: list[str] = []
    page.on("request", lambda r: queries.append(r.url) if "/api/v1/query" in r.url else None)
    await page.goto(f"{stack.url}#/host/e2e-web?range=5m")
    chart = page.locator('[data-panel="memory"] .chart')
    await expect(chart).not_to_have_attribute("data-points", "0")
    await expect(page.locator("#live")).to_be_checked()
    await expect(page.locator("#conn")).to_have_text("live")
    loaded = len(queries)
    assert loaded == len(PANELS)
    first = float(await chart.get_attribute("data-last") or 0)
    waiting_since = time.time()
    # A sample the collector takes from now on shows up, pushed over the WebSocket.
    await page.wait_for_function(
        """([sel, t]) => Number(document.querySelector(sel).dataset.last) > t""",
        arg=['[data-panel="memory"] .chart', max(first, waiting_since - 1)], timeout=10_000,
    )
    assert len(queries) == loaded, "live mode refetched instead of appending"
    newest = float(await chart.get_attribute("data-last") or 0)
    assert newest > first
    await shot(page, "host-live")

    # Live off: the chart stops moving.
    await page.uncheck("#live")
    frozen = await chart.get_attribute("data-last")
    later = await page.evaluate("() => new Promise((ok) => setTimeout(() => ok(Date.now()), 1500))")
    assert later
    assert await chart.get_attribute("data-last") == frozen


async def test_range_picker_switches_tiers(stack: Gateway, page: Page) -> None:
    await page.goto(f"{stack.url}#/host/e2e-web?range=1h")
    tier = page.locator("#tier")
    await expect(tier).to_have_text("tier: raw")
    expected = {"5m": "hot", "24h": "raw", "7d": "1m", "90d": "1h", "1h": "raw"}
    for label, name in expected.items():
        await page.click(f'[data-range="{label}"]')
        await expect(tier).to_have_text(f"tier: {name}")
        await expect(page.locator('[data-panel="memory"] .panel-tier')).to_contain_text(name)
        await expect(page.locator("#live")).to_be_disabled() if label in ("24h", "7d", "90d") else None
        if label == "7d":
            await shot(page, "host-7d")
    assert "range=1h" in page.url
    # Custom: two times, any tier.
    await page.click('[data-range="custom"]')
    await expect(page.locator("#custom")).to_be_visible()
    await page.fill("#from", time.strftime("%Y-%m-%dT%H:%M", time.localtime(time.time() - 3 * 86400)))
    await page.fill("#to", time.strftime("%Y-%m-%dT%H:%M", time.localtime(time.time() + 60)))
    await page.click("#custom button[type=submit]")
    await expect(tier).to_have_text("tier: 1m")


async def test_alerts_panel_shows_firing_alerts_live(stack: Gateway, page: Page, pool: Any, redis_url: str) -> None:
    await page.goto(stack.url)
    await expect(page.locator(".tile")).to_have_count(3)
    await expect(page.locator("#conn")).to_have_text("live")
    # What the alerts service does when a rule fires: store the state, then publish the event.
    await pool.execute(
        """
        INSERT INTO alert_state (rule, fingerprint, host_id, state, severity, annotations, value, active_at,
                                 fired_at, last_eval_at)
        VALUES ('root-disk-full', 'f1', 'e2e-db', 'firing', 'critical', '{"summary": "e2e-db: / is 97% full"}',
                0.97, now(), now(), now())
        """
    )
    r = aioredis.from_url(redis_url)
    ev = events_pb2.AlertEvent(rule="root-disk-full", fingerprint="f1", host_id="e2e-db",
                               state=events_pb2.ALERT_STATE_FIRING, previous=events_pb2.ALERT_STATE_PENDING,
                               severity="critical", value=0.97, annotations={"summary": "e2e-db: / is 97% full"},
                               time_unix_ms=time.time_ns() // 1_000_000)
    await busmod.RedisBus(r).publish(busmod.ALERTS, ev.SerializeToString())
    panel = page.locator("#alerts-panel")
    await expect(panel.locator(".alert.firing")).to_have_count(1)
    await expect(panel).to_contain_text("e2e-db: / is 97% full")
    await expect(page.locator("#alert-count b")).to_have_text("1")
    # Trouble first: the host with a firing alert comes right after the silent one.
    await expect(page.locator(".tile").nth(1)).to_have_attribute("data-host", "e2e-db")
    await shot(page, "alerts")

    resolved = events_pb2.AlertEvent(rule="root-disk-full", fingerprint="f1", host_id="e2e-db",
                                     state=events_pb2.ALERT_STATE_RESOLVED, previous=events_pb2.ALERT_STATE_FIRING)
    await busmod.RedisBus(r).publish(busmod.ALERTS, resolved.SerializeToString())
    await r.aclose()
    await expect(panel.locator(".alert")).to_have_count(0)
    await expect(page.locator("#alert-count b")).to_have_text("0")
