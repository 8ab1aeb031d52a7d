"""The dashboard in a real browser (Debian's Chromium driven by Playwright) against the real stack:
aggregator, collectors, PostgreSQL, Redis and the gateway. Screenshots go to test-artifacts/."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from playwright.async_api import Browser, Page, async_playwright, expect
from playwright.async_api import TimeoutError as PlaywrightTimeout

from sysmon.core import bus as busmod
from sysmon.pb.v1 import events_pb2
from tests.conftest import AggregatorFactory
from tests.gateway_helpers import Gateway, running_gateway, write_history
from tests.helpers import RawClient, make_batch, running_collector, wait_for

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
    for spark in ("cpu", "mem", "disk", "net"):  # drawn: a fresh host's first 15 s bucket is a dot
        await expect(web.locator(f'[data-spark="{spark}"] .chart')).to_have_attribute(
            "data-points", re.compile(r"^[1-9]\d*$"))
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


@pytest.mark.parametrize(("range_", "step_s"), [("5m", 1), ("24h", 300)])
async def test_live_mode_adds_new_samples_without_refetching(
    stack: Gateway, page: Page, range_: str, step_s: int
) -> None:
    queries: list[str] = []
    page.on("request", lambda r: queries.append(r.url) if "/api/v1/query" in r.url else None)
    answered: list[int] = []
    page.on("response", lambda r: answered.append(r.status) if "/api/v1/query" in r.url else None)
    # The frames pushed for the host, so that a wait that runs out says whether none came or none was drawn.
    pushed: list[float] = []

    def on_frame(payload: str | bytes) -> None:
        text = payload if isinstance(payload, str) else payload.decode()
        if '"samples"' in text and "e2e-web" in text:
            pushed.append(time.time())

    page.on("websocket", lambda ws: ws.on("framereceived", on_frame))
    await page.goto(f"{stack.url}#/host/e2e-web?range={range_}")
    chart = page.locator('[data-panel="memory"] .chart')
    # Drawn with points (an absent data-points, not yet drawn, is not "0" either).
    try:
        await expect(chart).to_have_attribute("data-points", re.compile(r"^[1-9][0-9]*$"), timeout=30_000)
    except AssertionError as e:
        msg = await page.locator('[data-panel="memory"] .panel-msg').text_content()
        raise AssertionError(f"the memory panel was not drawn: its message {msg!r}; {len(queries)} queries, "
                             f"answered {answered}") from e
    await expect(page.locator("#live")).to_be_checked()
    await expect(page.locator("#conn")).to_have_text("live")
    loaded = len(queries)
    # One query per panel, and one more for a panel that first had nothing (the host's memory series
    # may arrive a sample after its CPU ones).
    assert len(PANELS) <= loaded <= 2 * len(PANELS)
    first = float(await chart.get_attribute("data-last") or 0)
    points = int(await chart.get_attribute("data-points") or 0)
    waiting_since = time.time()
    # A sample the collector takes from now on shows up, pushed over the WebSocket ...
    try:
        await page.wait_for_function(
            """([sel, t]) => Number(document.querySelector(sel).dataset.updated) > t""",
            arg=['[data-panel="memory"] .chart', waiting_since - 1], timeout=30_000,
        )
    except PlaywrightTimeout:
        state = await chart.evaluate("(el) => ({...el.dataset})")
        conn = await page.locator("#conn").text_content()
        raise AssertionError(
            f"no live sample drawn in 30 s: {len(pushed)} sample frames for the host pushed since the page opened "
            f"({sum(t >= waiting_since for t in pushed)} while waiting), connection {conn!r}, chart {state}, "
            f"{len(queries) - loaded} refetches") from None
    assert len(queries) == loaded, "live mode refetched instead of adding the sample"
    # ... in its step bucket: a new point only when the sample starts a new bucket.
    newest = float(await chart.get_attribute("data-last") or 0)
    assert newest >= first
    assert newest % step_s == 0, f"a live point at {newest} is off the {step_s}s step"
    assert int(await chart.get_attribute("data-points") or 0) <= points + (newest - first) / step_s
    await shot(page, f"host-live-{range_}")

    # Live off: the chart stops moving.
    await page.uncheck("#live")
    frozen = await chart.get_attribute("data-last")
    later = await page.evaluate("() => new Promise((ok) => setTimeout(() => ok(Date.now()), 1500))")
    assert later
    assert await chart.get_attribute("data-last") == frozen


async def test_live_samples_are_averaged_into_their_bucket(
    stack: Gateway, page: Page, start_aggregator: AggregatorFactory
) -> None:
    """On the 24 h range (5 min steps) live samples join the newest bucket's mean, as the server
    would have computed it, instead of adding points of their own."""
    mib = 1024 * 1024
    bucket_ms = (time.time_ns() // 1_000_000 // 300_000 - 2) * 300_000  # a whole bucket, 10 min ago
    session = "avg"

    def sample(seq: int, mebibytes: int) -> Any:
        return make_batch("avg-box", session, seq, declare=seq == 1, time_ms=bucket_ms + (seq - 1) * 5000,
                          values=(mebibytes * mib,), name="system.memory.usage", attributes={"state": "used"})

    # Samples sent before the gateway has the page's subscription would not be pushed to it.
    subscribed = asyncio.Event()

    def on_frame(payload: str | bytes) -> None:
        text = payload if isinstance(payload, str) else payload.decode()
        if '"subscribed"' in text and "avg-box" in text:
            subscribed.set()

    page.on("websocket", lambda ws: ws.on("framereceived", on_frame))
    agg = await start_aggregator()
    async with RawClient(agg.address, host_id="avg-box", session_id=session) as c:
        for seq, value in enumerate((100, 200, 300), start=1):
            c.send(sample(seq, value))
        await wait_for(lambda: len(c.acked) == 3, message="first three samples stored")
        await page.goto(f"{stack.url}#/host/avg-box?range=24h")
        chart = page.locator('[data-panel="memory"] .chart')
        await expect(chart).to_have_attribute("data-points", "1")
        await expect(chart).to_have_attribute("data-last", str(bucket_ms // 1000))
        await wait_for(subscribed.is_set, within=10, message="the page subscribed to avg-box")
        assert await hover_value(page, "memory") == "200.0 MiB"

        c.send(sample(4, 400))
        c.send(sample(5, 500))
        await expect(chart).to_have_attribute("data-updated", str((bucket_ms + 20_000) // 1000))
        # The mean of all five, in the one bucket the server has for them.
        await expect(chart).to_have_attribute("data-points", "1")
        assert await hover_value(page, "memory") == "300.0 MiB"


async def hover_value(page: Page, panel: str) -> str:
    """The value the tooltip shows for the newest point of a panel's first series."""
    over = page.locator(f'[data-panel="{panel}"] .u-over')
    box = await over.bounding_box()
    assert box is not None
    await page.mouse.move(0, 0)
    await page.mouse.move(box["x"] + box["width"] - 2, box["y"] + box["height"] / 2)
    tip = page.locator(f'[data-panel="{panel}"] .tooltip b').first
    await expect(tip).to_be_visible()
    return await tip.inner_text()


async def test_range_picker_switches_tiers(stack: Gateway, page: Page) -> None:
    await page.goto(f"{stack.url}#/host/e2e-web?range=1h")
    tier = page.locator("#tier")
    await expect(tier).to_have_text("tier: raw")
    expected = {"5m": "hot", "24h": "raw", "7d": "1m", "90d": "1h", "1h": "raw"}
    for label, name in expected.items():
        await page.click(f'[data-range="{label}"]')
        await expect(tier).to_have_text(f"tier: {name}")
        await expect(page.locator('[data-panel="memory"] .panel-tier')).to_contain_text(name)
        await expect(page.locator("#live")).to_be_enabled()  # every range that ends now follows along
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
    await expect(page.locator("#live")).to_be_disabled()


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


async def test_a_panel_without_data_draws_when_its_first_live_sample_arrives(
    stack: Gateway, page: Page, start_aggregator: AggregatorFactory
) -> None:
    """A host's first minutes: the page opens before its memory series exists (an empty panel); the
    panel asks again when the first memory sample is pushed, instead of staying empty until a reload."""
    host = "late-mem"
    subscribed = asyncio.Event()

    def on_frame(payload: str | bytes) -> None:
        text = payload if isinstance(payload, str) else payload.decode()
        if '"subscribed"' in text and host in text:
            subscribed.set()

    page.on("websocket", lambda ws: ws.on("framereceived", on_frame))
    agg = await start_aggregator()
    async with RawClient(agg.address, host_id=host, session_id="cpu") as c:
        c.send(make_batch(host, "cpu", 1, values=(0.25,), attributes={"cpu": "total", "state": "idle"}))
        await wait_for(lambda: len(c.acked) == 1, message="the CPU sample stored")
        await c.finish()
    await page.goto(f"{stack.url}#/host/{host}?range=5m")
    memory = page.locator('[data-panel="memory"]')
    await expect(memory.locator(".chart")).to_have_attribute("data-points", "0")
    await wait_for(subscribed.is_set, within=10, message=f"the page subscribed to {host}")
    async with RawClient(agg.address, host_id=host, session_id="mem") as c:
        c.send(make_batch(host, "mem", 1, values=(300 * 1024 * 1024,), name="system.memory.usage",
                          attributes={"state": "used"}))
        await wait_for(lambda: len(c.acked) == 1, message="the memory sample stored")
        await expect(memory.locator(".chart")).to_have_attribute("data-points", re.compile(r"^[1-9][0-9]*$"))
        await expect(memory.locator(".panel-msg")).to_be_hidden()
        await c.finish()
