"""The gateway's own Prometheus metrics, and the ASGI middleware that times every request."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Histogram(
    "sysmon_gateway_request_seconds", "HTTP requests by route template, method and status",
    ["route", "method", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
QUERY_TIER = Counter("sysmon_gateway_queries_total", "Series queries answered, by tier", ["tier"])
WS_CLIENTS = Gauge("sysmon_gateway_ws_clients", "Connected /ws/live clients")
WS_FRAMES = Counter("sysmon_gateway_ws_frames_total", "Frames sent to /ws/live clients")
WS_DROPPED = Counter(
    "sysmon_gateway_ws_dropped_frames_total", "Frames dropped because a client's queue was full (oldest first)"
)
WS_CLOSED = Counter("sysmon_gateway_ws_closed_total", "Connections the gateway closed, by close code", ["code"])
BUS_EVENTS = Counter("sysmon_gateway_bus_events_total", "Bus events received for live fan-out", ["topic"])
BUS_ERRORS = Counter("sysmon_gateway_bus_errors_total", "Bus subscriptions that failed and were restarted",
                     ["topic"])


class RequestMetrics:
    """Times HTTP requests, labelled by route template (never the raw path: bounded cardinality)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or ("/assets" if scope["path"].startswith("/assets/") else "other")
            REQUESTS.labels(path, scope["method"], str(status)).observe(time.perf_counter() - t0)
