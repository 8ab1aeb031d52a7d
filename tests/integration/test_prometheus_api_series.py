"""The Prometheus API's series, labels and label values over a time range, as Grafana asks for them
(start and end on every request): a series is listed only when it has a sample in the range, read
from the raw tier (sealed blocks and open frames) or, past its retention, from the rollups."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import asyncpg
import pytest

from sysmon.aggregator import maintenance
from tests.gateway_helpers import Gateway, running_gateway, write_history

CPU = "system_cpu_utilization_ratio"


async def _hosts(gw: Gateway, **params: str) -> set[str]:
    r = await gw.http.get("/prometheus/api/v1/series", params={"match[]": CPU, **params})
    assert r.status_code == 200, r.text
    return {s["host"] for s in r.json()["data"]}


async def _host_values(gw: Gateway, **params: str) -> list[str]:
    r = await gw.http.get("/prometheus/api/v1/label/host/values", params=params)
    assert r.status_code == 200, r.text
    return r.json()["data"]


@pytest.fixture
async def history(start_aggregator, pg_dsn: str) -> float:
    """old-host: samples from 4 h until 2.5 h ago; new-host: the last 20 minutes. Rolled up, and the
    closed hours sealed, as the aggregator's jobs leave them."""
    agg = await start_aggregator()
    await write_history(agg.address, "old-host", hours=4, every_s=120, until_s_ago=2.5 * 3600, session="old")
    await write_history(agg.address, "new-host", hours=1 / 3, every_s=60, session="new")
    assert await maintenance.rollup_once(agg.storage) is not None
    sealed = await maintenance.seal_once(agg.storage)
    assert sealed is not None
    assert sealed.sealed, "old-host's hours are sealed blocks"
    return time.time()


@pytest.mark.parametrize("raw_retention", ["24h", "1h"], ids=["raw-tier", "rollups"])
async def test_only_series_with_samples_in_the_range_are_listed(history: float, pg_dsn: str, redis_url: str,
                                                               raw_retention: str) -> None:
    now = history
    if raw_retention == "1h":
        # As retention will: the raw samples older than an hour are gone, the rollups stay.
        conn = await asyncpg.connect(pg_dsn)
        await conn.execute("DELETE FROM raw_frames WHERE ts < now() - interval '1 hour'")
        await conn.execute("DELETE FROM samples_sealed WHERE t_last < now() - interval '1 hour'")
        await conn.close()
    async with running_gateway(pg_dsn, redis_url, raw_retention=raw_retention) as gw:
        # All samples of old-host are older than start: not listed; new-host's are inside.
        assert await _hosts(gw, start=f"{now - 3600:.3f}", end=f"{now:.3f}") == {"new-host"}
        assert await _hosts(gw, start=f"{now - 5 * 3600:.3f}", end=f"{now - 2 * 3600:.3f}") == {"old-host"}
        # Neither has a sample between 2.4 h and 1 h ago.
        assert await _hosts(gw, start=f"{now - 2.4 * 3600:.3f}", end=f"{now - 3600:.3f}") == set()
        # RFC 3339 as well as Unix seconds; no bound is the whole retention.
        since = datetime.fromtimestamp(now - 3600, UTC).isoformat().replace("+00:00", "Z")
        assert await _hosts(gw, start=since) == {"new-host"}
        assert await _hosts(gw) == {"old-host", "new-host"}
        assert await _hosts(gw, end=f"{now - 2 * 3600:.3f}") == {"old-host"}

        assert await _host_values(gw, start=f"{now - 3600:.3f}") == ["new-host"]
        assert await _host_values(gw, end=f"{now - 2 * 3600:.3f}", **{"match[]": CPU}) == ["old-host"]
        assert await _host_values(gw) == ["new-host", "old-host"]
        r = await gw.http.post("/prometheus/api/v1/labels", data={"start": f"{now - 3600:.3f}", "match[]": CPU})
        assert {"__name__", "cpu", "host", "state"} <= set(r.json()["data"])
        r = await gw.http.get("/prometheus/api/v1/labels", params={"start": f"{now + 3600:.3f}"})
        assert r.json() == {"status": "success", "data": []}


@pytest.mark.parametrize(("path", "params", "error"), [
    ("series", {"match[]": CPU, "start": "yesterday"}, 'invalid parameter "start": cannot parse "yesterday" to a '
                                                       "valid timestamp"),
    ("series", {"match[]": CPU, "end": "inf"}, 'invalid parameter "end": cannot parse "inf" to a valid timestamp'),
    ("labels", {"start": "2025-01-01T00:00:00"}, 'invalid parameter "start": cannot parse'),
    ("label/host/values", {"end": "NaN"}, 'invalid parameter "end": cannot parse "NaN"'),
    ("label/1host/values", {}, 'invalid label name: "1host"'),
    ("series", {"start": "0"}, "no match[] parameter provided"),
    ("series", {"match[]": "rate(x[5m])"}, 'invalid parameter "match[]"'),
])
async def test_bad_parameters_are_prometheus_errors(pg_dsn: str, redis_url: str, path: str, params: dict[str, str],
                                                    error: str) -> None:
    async with running_gateway(pg_dsn, redis_url) as gw:
        r = await gw.http.get(f"/prometheus/api/v1/{path}", params=params)
        assert r.status_code == 400, r.text
        body = r.json()
        assert body["status"] == "error"
        assert body["errorType"] == "bad_data"
        assert body["error"].startswith(error)


async def test_times_beyond_any_sample_are_empty_answers_not_errors(pg_dsn: str, redis_url: str) -> None:
    async with running_gateway(pg_dsn, redis_url) as gw:
        for params in ({"match[]": CPU, "start": "1e300"}, {"match[]": CPU, "end": "-1e300"},
                       {"match[]": CPU, "start": "-292273086-05-16T16:47:06Z", "end": "-1e20"}):
            r = await gw.http.get("/prometheus/api/v1/series", params=params)
            assert r.status_code == 200, r.text
            assert r.json()["data"] == []
        r = await gw.http.get("/prometheus/api/v1/query", params={"query": CPU, "time": "1e300"})
        assert r.status_code == 200, r.text
        assert r.json()["data"]["result"] == []
