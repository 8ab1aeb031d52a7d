"""No input yields a 500: generated query parameters against the real gateway over HTTP, PostgreSQL and Redis.

Every answer is a success or a 4xx problem+json; hypothesis mixes valid values (so that the
tiers and the storage run) with arbitrary text, numbers and extremes.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.gateway_helpers import running_gateway, write_history

TEXT = st.text(st.characters(codec="utf-8"), max_size=30)
NUMBERS = st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True)).map(str)
TIMES = st.one_of(
    st.sampled_from(["now", "now-1m", "now-4m", "now-1h", "now-23h", "now-2d", "now-7d", "now-30d", "now-90d",
                     "now-400d", "now+1h", "2025-01-01T00:00:00Z", "1970-01-01T00:00:00Z", "2199-12-31T00:00:00Z",
                     "0", "1700000000", "now-", "now-1", "2025-02-30T00:00:00Z"]),
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    NUMBERS, TEXT,
)
STEPS = st.one_of(st.sampled_from(["1s", "5s", "15s", "1m", "1h", "1d", "366d", "367d", "0", "0s", "-1s", "1ms"]),
                  NUMBERS, TEXT)
METRICS = st.one_of(st.sampled_from(["system.cpu.utilization", "no.such", "", ".", "a" * 300]), TEXT)
HOSTS = st.one_of(st.sampled_from(["hist-host", "nobody", "-x", "a" * 300]), TEXT)
PAIRS = st.one_of(st.sampled_from(["cpu=0", "state=user", "cpu=", "=x", "cpu", "cpu=0=1"]), TEXT)
QUERY = st.fixed_dictionaries({}, optional={
    "metric": st.lists(METRICS, max_size=12),
    "host": st.lists(HOSTS, max_size=3),
    "match": st.lists(PAIRS, max_size=3),
    "start": TIMES, "end": TIMES, "step": STEPS,
    "agg": st.one_of(st.sampled_from(["avg", "min", "max"]), TEXT),
    "sum_by": st.one_of(st.just("host"), TEXT),
})
OTHER = st.one_of(
    st.builds(lambda h: f"/api/v1/hosts/{quote(h, safe='')}", HOSTS),
    st.builds(lambda labels, status: ("/api/v1/hosts", {"label": labels, "status": status}),
              st.lists(PAIRS, max_size=3), st.one_of(st.sampled_from(["up", "stale", "down"]), TEXT)),
    st.builds(lambda since, until, limit, before: ("/api/v1/alerts/history",
                                                   {"since": since, "until": until, "limit": limit,
                                                    "before_id": before}),
              TIMES, TIMES, NUMBERS, NUMBERS),
    st.builds(lambda host, rule, state: ("/api/v1/alerts", {"host": host, "rule": rule, "state": state}),
              HOSTS, TEXT, st.one_of(st.sampled_from(["firing", "pending"]), TEXT)),
)


@pytest.fixture
async def stored(start_aggregator, pg_dsn: str, redis_url: str) -> tuple[str, str]:
    agg = await start_aggregator()
    await write_history(agg.address, "hist-host", hours=2, every_s=300)
    return pg_dsn, redis_url


def _check(r: Any) -> None:
    assert r.status_code < 500, (r.request.url, r.text)
    if r.status_code >= 400:
        assert r.headers["content-type"] == "application/problem+json", r.text
        assert r.json()["detail"]


async def test_no_query_parameters_yield_a_500(stored: tuple[str, str]) -> None:
    pg_dsn, redis_url = stored
    async with running_gateway(pg_dsn, redis_url) as gw:
        # Hypothesis drives a blocking client from a thread; the server answers on this loop.
        await asyncio.to_thread(_fuzz, gw.url.rstrip("/"))


def _fuzz(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        assert client.get("/api/v1/query", params={"metric": "system.cpu.utilization",
                                                   "start": "now-2h"}).json()["series"]

        @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
        @given(QUERY)
        def query(params: dict[str, Any]) -> None:
            _check(client.get("/api/v1/query", params=params))

        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
        @given(OTHER)
        def other(target: Any) -> None:
            path, params = target if isinstance(target, tuple) else (target, None)
            _check(client.get(path, params=params))

        query()
        other()
