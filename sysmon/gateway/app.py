"""The app factory: create_app(settings, ...) wires storage, the bus and the routers.

Nothing is created at import time; tests pass their own pool and Redis, `sysmon gateway` and
`sysmon up` pass settings and let the lifespan connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import asyncpg
import redis.asyncio as aioredis
from fastapi import Depends, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

from sysmon.core import bus as busmod
from sysmon.core.bus import Bus
from sysmon.core.hot import HotTier
from sysmon.core.identity import Authenticator
from sysmon.core.query import QueryLimits, QueryService, TierPolicy
from sysmon.core.settings import GatewaySettings, is_loopback
from sysmon.core.storage.schema import create_pool
from sysmon.core.telemetry import ComponentMetrics
from sysmon.gateway import problems
from sysmon.gateway.deps import require_reader
from sysmon.gateway.fleet import Fleet
from sysmon.gateway.live import protocol
from sysmon.gateway.live.hub import LiveHub
from sysmon.gateway.routes import alerts, dashboard, health, hosts, live, prometheus, query
from sysmon.gateway.state import GatewayState
from sysmon.gateway.status import StatusPolicy
from sysmon.gateway.telemetry import RequestMetrics

log = logging.getLogger(__name__)


class ConfigurationError(Exception):
    pass


def resolve_authenticator(settings: GatewaySettings, *, loopback_exempt: bool = False) -> Authenticator:
    """How clients are verified. No credential configured means no authentication, which is
    allowed only on loopback in `sysmon up` (loopback_exempt) or when asked for in so many words."""
    try:
        authenticator = Authenticator.from_settings(settings)
    except ValueError as e:
        raise ConfigurationError(str(e)) from e
    if authenticator.enabled or settings.insecure_no_auth or (loopback_exempt and is_loopback(settings.listen)):
        return authenticator
    where = "" if loopback_exempt else " (only `sysmon up` on loopback runs without one)"
    raise ConfigurationError(
        f"refusing to serve on {settings.listen} without authentication{where}: set SYSMON_TOKEN or "
        "SYSMON_TOKEN_SECRET, or --insecure-no-auth for a trusted network"
    )


def create_app(
    settings: GatewaySettings,
    *,
    pool: asyncpg.Pool | None = None,
    redis: aioredis.Redis | None = None,
    bus: Bus | None = None,
    loopback_exempt: bool = False,
    process_metrics: bool = True,
) -> FastAPI:
    authenticator = resolve_authenticator(settings, loopback_exempt=loopback_exempt)
    if pool is None and not settings.postgres_url:
        raise ConfigurationError("the gateway needs SYSMON_POSTGRES_URL")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # min_size=0: the gateway starts (and /readyz says why it is not ready) while PostgreSQL is away.
        p = pool or await create_pool(settings.postgres_url or "", min_size=0, max_size=10)
        r = redis
        if r is None and settings.redis_url:
            r = aioredis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
        hot = HotTier(r, int(settings.hot_window.total_seconds() * 1000)) if r is not None else None
        b = bus or busmod.from_settings(settings, r, client_id="sysmon-gateway")
        service = QueryService(
            p, hot,
            TierPolicy(settings.hot_window, settings.raw_retention, settings.rollup_1m_retention),
            QueryLimits(max_points_per_series=settings.max_points_per_series, max_series=settings.max_series),
        )
        hub = LiveHub(b, hot, queue_frames=settings.ws_queue_frames,
                      heartbeat_s=settings.ws_heartbeat.total_seconds(), max_clients=settings.ws_max_clients)
        fleet = Fleet(p, hot, StatusPolicy(settings.stale_after, settings.down_after))
        app.state.gateway = GatewayState(settings, authenticator, p, r, hot, b, service, fleet, hub)
        stop = asyncio.Event()
        running = asyncio.create_task(hub.run(stop), name="live-hub")
        try:
            yield
        finally:
            hub.close_all(protocol.CLOSE_GOING_AWAY, "gateway stopping")
            stop.set()
            await running
            if pool is None:
                await p.close()
            if bus is None and b is not None:
                with contextlib.suppress(Exception):
                    await b.close()
            if redis is None and r is not None:
                with contextlib.suppress(Exception):
                    await r.aclose()

    app = FastAPI(
        title="sysmon gateway",
        version="1",
        summary="Queries, live push and the dashboard of a sysmon fleet",
        description=(
            "REST under /api/v1 (a bearer token of scope reader, or the fleet token, unless running on "
            "loopback in `sysmon up`); live push on "
            "/ws/live; errors are application/problem+json (RFC 9457)."
        ),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    # /metrics: the gateway's families, and the process's unless another component serves them.
    app.state.metrics = ComponentMetrics(["gateway"], process=process_metrics)
    problems.install(app)
    app.add_middleware(RequestMetrics)
    auth = [Depends(require_reader)] if authenticator.enabled else []
    for r in (hosts.router, query.router, alerts.router, prometheus.router):
        app.include_router(r, dependencies=auth)
    app.include_router(health.router)
    app.include_router(live.router)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        # Swagger UI from the npm-installed copy in /assets: no CDN at run time.
        return get_swagger_ui_html(
            openapi_url="/openapi.json", title="sysmon gateway API",
            swagger_js_url="/assets/vendor/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/assets/vendor/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/assets/favicon.svg",
        )

    dashboard.install(app, settings.static_dir)
    return app
