"""The gateway's Prometheus HTTP API next to a real Prometheus 2.42 holding the same samples: Prometheus
scrapes an exporter and remote-writes every sample to sysmon, then each PromQL expression of a table
is evaluated by both, and promtool queries sysmon as it would query Prometheus."""

from __future__ import annotations

import asyncio
import math
import subprocess
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from sysmon.core.embedded import free_port
from tests.gateway_helpers import running_gateway
from tests.helpers import wait_for
from tests.prometheus_helpers import binary, running_prometheus
from tests.remote_write_helpers import stored

pytestmark = pytest.mark.slow

# Each evaluated at the same instant by Prometheus and by sysmon.
EXPRESSIONS = [
    "demo_requests_total",
    'demo_requests_total{code="200"}',
    'demo_requests_total{code!="200"}',
    'demo_requests_total{path=~"/a|/b", code!~"5.."}',
    "rate(demo_requests_total[5s])",
    "irate(demo_requests_total[5s])",
    "increase(demo_requests_total[10s])",
    "delta(demo_temperature_celsius[10s])",
    "idelta(demo_temperature_celsius[10s])",
    "sum by (code) (rate(demo_requests_total[5s]))",
    "avg without (path) (rate(demo_requests_total[10s]))",
    "max by (path) (demo_requests_total)",
    "min(demo_temperature_celsius)",
    "count by (code) (demo_requests_total)",
    "avg_over_time(demo_temperature_celsius[10s])",
    "min_over_time(demo_temperature_celsius[10s])",
    "max_over_time(demo_temperature_celsius[10s])",
    "sum_over_time(demo_temperature_celsius[10s])",
    "count_over_time(demo_temperature_celsius[10s])",
    "last_over_time(demo_temperature_celsius[10s])",
    "stddev_over_time(demo_temperature_celsius[10s])",
    "quantile_over_time(0.9, demo_temperature_celsius[10s])",
    "demo_requests_total * 2 - 1",
    "10 / demo_temperature_celsius",
    "demo_requests_total / ignoring(code) group_left sum without (code) (demo_requests_total)",
    "rate(demo_requests_total[5s]) / on(path, code, instance, job) demo_requests_total",
    "demo_temperature_celsius > 20",
    "demo_temperature_celsius > bool 20",
    "demo_requests_total and on(path) demo_requests_total{code=\"500\"}",
    "demo_requests_total unless demo_requests_total{code=\"500\"}",
    "topk(2, demo_requests_total)",
    "bottomk(1, demo_temperature_celsius)",
    "histogram_quantile(0.9, rate(demo_latency_seconds_bucket[10s]))",
    "histogram_quantile(0.5, sum by (le) (demo_latency_seconds_bucket))",
    "abs(-demo_temperature_celsius)",
    "clamp_max(demo_temperature_celsius, 20)",
    "1 + 2 * 3",
    "scalar(sum(demo_requests_total)) / 4",
]


class Demo:
    """Values that move with each scrape n: three counters (one resets at n=8), two gauges, a histogram."""

    def __init__(self) -> None:
        self.n = 0
        self.lock = threading.Lock()

    def collect(self):
        with self.lock:
            self.n += 1
            n = self.n
        c = CounterMetricFamily("demo_requests", "requests", labels=["path", "code"])
        c.add_metric(["/a", "200"], 3.0 * n)
        c.add_metric(["/a", "500"], 1.0 * n + (n % 3))
        c.add_metric(["/b", "200"], 7.0 * (n if n < 8 else n - 8))
        yield c
        g = GaugeMetricFamily("demo_temperature_celsius", "temperature", labels=["room"])
        g.add_metric(["a"], 20.0 + (n % 7) * 0.5)
        g.add_metric(["b"], 18.0 + (n % 5))
        yield g
        h = HistogramMetricFamily("demo_latency_seconds", "latency")
        h.add_metric([], [("0.1", 1.0 * n), ("0.5", 3.0 * n), ("1.0", 4.0 * n), ("+Inf", 5.0 * n)], sum_value=2.5 * n)
        yield h


def _key(metric: dict[str, str]) -> frozenset[tuple[str, str]]:
    # sysmon adds the series' host; Prometheus has none.
    return frozenset((k, v) for k, v in metric.items() if k != "host")


def _result(body: dict[str, Any]) -> Any:
    assert body["status"] == "success", body
    data = body["data"]
    if data["resultType"] == "scalar":
        return float(data["result"][1])
    if data["resultType"] == "matrix":
        return {_key(r["metric"]): [(round(float(t) * 1000), float(v)) for t, v in r["values"]] for r in data["result"]}
    return {_key(r["metric"]): float(r["value"][1]) for r in data["result"]}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(x[0] == y[0] and _same(x[1], y[1]) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.fixture
def exporter():
    registry = CollectorRegistry()
    registry.register(Demo())
    server, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


async def test_promql_answers_match_prometheus(start_aggregator, pg_dsn: str, redis_url: str, short_dir: Path,
                                               exporter: int) -> None:
    rw_port = free_port()
    await start_aggregator(http_listen=f"127.0.0.1:{rw_port}")
    target = f"127.0.0.1:{exporter}"
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1m"},
        "scrape_configs": [{"job_name": "demo", "static_configs": [{"targets": [target]}]}],
        "remote_write": [{"url": f"http://127.0.0.1:{rw_port}/api/v1/write",
                          "queue_config": {"batch_send_deadline": "200ms", "min_backoff": "50ms"}}],
    }
    probe = ("127.0.0.1", "demo_requests_total", {"job": "demo", "instance": target, "path": "/a", "code": "200"})
    with running_prometheus(short_dir / "prom", config) as prom:
        async def enough() -> list[tuple[int, float]] | None:
            got = await stored(pg_dsn, *probe)
            return got if len(got) >= 16 else None

        ours = await wait_for(enough, within=90, interval=0.5, message=f"16 scrapes in sysmon\n{prom.log_tail()}")
        # An instant a little after a scrape that every series' samples have long reached sysmon by.
        t = ours[-4][0] + 300
        await asyncio.sleep(1.0)
        async with running_gateway(pg_dsn, redis_url) as gw, httpx.AsyncClient(base_url=prom.url, timeout=30) as pc:
            mismatches = []
            for expr in EXPRESSIONS:
                params = {"query": expr, "time": f"{t / 1000:.3f}"}
                theirs = _result((await pc.get("/api/v1/query", params=params)).json())
                r = await gw.http.post("/prometheus/api/v1/query", data=params)  # as Grafana sends it
                assert r.status_code == 200, (expr, r.text)
                mine = _result(r.json())
                if not _same(mine, theirs):
                    mismatches.append(f"{expr}\n  prometheus: {theirs}\n  sysmon:     {mine}")
                if isinstance(theirs, dict):
                    assert theirs, f"{expr} is empty in Prometheus: not a test of anything"
            assert not mismatches, "\n".join(mismatches)

            rng = {"query": "sum by (path) (rate(demo_requests_total[5s]))", "start": f"{(t - 8000) / 1000:.3f}",
                   "end": f"{t / 1000:.3f}", "step": "1s"}
            theirs = _result((await pc.get("/api/v1/query_range", params=rng)).json())
            mine = _result((await gw.http.get("/prometheus/api/v1/query_range", params=rng)).json())
            assert len(next(iter(theirs.values()))) == 9
            assert _same(mine, theirs), f"prometheus: {theirs}\nsysmon: {mine}"

            # What Prometheus clients read besides queries.
            series = (await gw.http.get("/prometheus/api/v1/series", params={"match[]": "demo_latency_seconds_bucket"}))
            assert sorted(s["le"] for s in series.json()["data"]) == ["+Inf", "0.1", "0.5", "1.0"]
            names = (await gw.http.get("/prometheus/api/v1/label/__name__/values")).json()["data"]
            assert {"demo_requests_total", "demo_temperature_celsius", "up"} <= set(names)
            assert "host" in (await gw.http.get("/prometheus/api/v1/labels")).json()["data"]
            meta = (await gw.http.get("/prometheus/api/v1/metadata")).json()["data"]
            assert meta["demo_requests_total"][0]["type"] == "counter"
            build = (await gw.http.get("/prometheus/api/v1/status/buildinfo")).json()
            assert build["data"]["version"].startswith("2.")

            # Not supported: Prometheus's error shape, naming the function.
            r = await gw.http.get("/prometheus/api/v1/query", params={"query": 'label_replace(up, "a", "b", "c", "d")'})
            assert r.status_code == 400
            assert r.json()["status"] == "error"
            assert r.json()["errorType"] == "bad_data"
            assert "label_replace" in r.json()["error"]
            bad = await gw.http.get("/prometheus/api/v1/query", params={"query": "sum(rate(x[5m]"})
            assert bad.status_code == 400
            assert bad.json()["errorType"] == "bad_data"

            # promtool, as a person would point it at Prometheus.
            url = f"{gw.url.rstrip('/')}/prometheus"
            out = await asyncio.to_thread(subprocess.run, [binary("promtool"), "query", "instant", "--time",
                                                          f"{t / 1000:.3f}", url, 'demo_requests_total{path="/a"}'],
                                          capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            lines = sorted(out.stdout.strip().splitlines())
            expected_a = _result((await pc.get("/api/v1/query", params={
                "query": 'demo_requests_total{path="/a",code="200"}', "time": f"{t / 1000:.3f}"})).json())
            assert len(lines) == 2
            value, _, at = lines[0].partition(" => ")[2].partition(" @[")
            assert float(value) == next(iter(expected_a.values()))
            assert float(at.rstrip("]")) == pytest.approx(t / 1000)
            out = await asyncio.to_thread(subprocess.run, [binary("promtool"), "query", "range", "--start",
                                                          f"{(t - 4000) / 1000:.3f}", "--end", f"{t / 1000:.3f}",
                                                          "--step", "1s", url, "min(demo_temperature_celsius)"],
                                          capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            assert out.stdout.count(" @[") == 5
