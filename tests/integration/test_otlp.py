"""OTLP metrics from a real OpenTelemetry SDK process, over OTLP/gRPC (the aggregator's gRPC port)
and OTLP/HTTP (its HTTP listener): gauges, counters (cumulative and delta), an up-down counter and a
histogram land as sysmon series with the resource's host and service."""

from __future__ import annotations

import asyncio
import gzip
import sys
import time
from pathlib import Path

import asyncpg
import httpx
import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2

from tests.gateway_helpers import running_gateway
from tests.remote_write_helpers import stored

SCRIPT = Path(__file__).resolve().parents[1] / "otel_sdk_process.py"
TOKEN = "otlp-test-token-0123456789"
# Resource attributes that become series attributes (deployment.environment does not).
SERVICE = {"service.name": "checkout", "service.instance.id": "checkout-1"}


async def _run_sdk(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(sys.executable, str(SCRIPT), *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    async with asyncio.timeout(120):
        out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
    return out.decode()


async def _last(dsn: str, host: str, name: str, attrs: dict[str, str]) -> float:
    got = await stored(dsn, host, name, attrs)
    assert got, f"nothing stored for {name} {attrs}"
    return got[-1][1]


async def _check_host(dsn: str, host: str) -> None:
    assert await _last(dsn, host, "app.requests", {**SERVICE, "route": "/pay"}) == 20.0
    assert await _last(dsn, host, "app.queue.depth", SERVICE) == 2.0
    assert await _last(dsn, host, "app.temperature", {**SERVICE, "sensor": "inlet"}) == 42.5
    assert await _last(dsn, host, "app.latency_count", SERVICE) == 5.0
    assert await _last(dsn, host, "app.latency_sum", SERVICE) == pytest.approx(22.72)
    buckets = {le: await _last(dsn, host, "app.latency_bucket", {**SERVICE, "le": le})
               for le in ("0.1", "1", "10", "+Inf")}
    assert buckets == {"0.1": 1.0, "1": 3.0, "10": 4.0, "+Inf": 5.0}
    conn = await asyncpg.connect(dsn)
    rows = {r["name"]: (r["unit"], r["kind"]) for r in await conn.fetch(
        "SELECT name, unit, kind FROM series WHERE host_id = $1", host)}
    await conn.close()
    assert rows["app.requests"] == ("{request}", 3)  # a counter
    assert rows["app.queue.depth"] == ("{item}", 1)  # an up-down counter is a level: a gauge
    assert rows["app.temperature"] == ("Cel", 1)
    assert rows["app.latency_sum"] == ("s", 3)
    assert rows["app.latency_bucket"] == ("s", 3)


@pytest.mark.slow
async def test_sdk_exports_over_grpc_and_http(start_aggregator, pg_dsn: str, redis_url: str) -> None:
    agg = await start_aggregator(http_listen="127.0.0.1:0", token=TOKEN)
    await _run_sdk("--protocol", "grpc", "--endpoint", f"http://{agg.address}", "--host", "otel-grpc",
                   "--token", TOKEN)
    await _check_host(pg_dsn, "otel-grpc")
    await _run_sdk("--protocol", "http", "--endpoint", f"{agg.http.url}/v1/metrics", "--host", "otel-http",
                   "--token", TOKEN, "--delta")
    await _check_host(pg_dsn, "otel-http")

    # Under their Prometheus names in the Prometheus API: unit suffixes, _total, labels from attributes.
    async with running_gateway(pg_dsn, redis_url) as gw:
        async def query(expr: str) -> dict[str, float]:
            r = await gw.http.get("/prometheus/api/v1/query", params={"query": expr})
            assert r.status_code == 200, r.text
            return {s["metric"]["host"]: float(s["value"][1]) for s in r.json()["data"]["result"]}

        assert await query('app_requests_total{service_name="checkout", route="/pay"}') == {
            "otel-grpc": 20.0, "otel-http": 20.0}
        assert await query("app_temperature_celsius") == {"otel-grpc": 42.5, "otel-http": 42.5}
        # Buckets 0.1: 1, 1: 3, 10: 4, +Inf: 5; the median's rank 2.5 falls in (0.1, 1], 1.5 of its 2.
        assert await query("histogram_quantile(0.5, app_latency_seconds_bucket)") == pytest.approx(
            {"otel-grpc": 0.775, "otel-http": 0.775})


async def test_http_answers(start_aggregator, pg_dsn: str) -> None:
    agg = await start_aggregator(http_listen="127.0.0.1:0")
    req = metrics_service_pb2.ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    rm.resource.attributes.add(key="host.name", value={"string_value": "edge-1"})
    m = rm.scope_metrics.add().metrics.add(name="edge.load", unit="1")
    now_ns = time.time_ns()
    m.gauge.data_points.add(time_unix_nano=now_ns, as_double=0.5)
    m.gauge.data_points.add(time_unix_nano=now_ns - 48 * 3600 * 10**9, as_double=0.7)  # too old
    bad = rm.scope_metrics[0].metrics.add(name="bad name!", unit="1")
    bad.gauge.data_points.add(time_unix_nano=now_ns, as_int=1)
    async with httpx.AsyncClient(base_url=agg.http.url, timeout=30) as client:
        r = await client.post("/v1/metrics", content=gzip.compress(req.SerializeToString()),
                              headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"})
        assert r.status_code == 200
        answer = metrics_service_pb2.ExportMetricsServiceResponse.FromString(r.content)
        assert answer.partial_success.rejected_data_points == 2
        assert "outside the accepted window" in answer.partial_success.error_message
        assert "bad name!" in answer.partial_success.error_message
        assert await stored(pg_dsn, "edge-1", "edge.load", {}) == [(now_ns // 10**6, 0.5)]

        json_body = await client.post("/v1/metrics", content=b"{}", headers={"Content-Type": "application/json"})
        assert json_body.status_code == 415
        assert "application/x-protobuf" in status_pb2.Status.FromString(json_body.content).message
        garbage = await client.post("/v1/metrics", content=b"\xff\xff\xff",
                                    headers={"Content-Type": "application/x-protobuf"})
        assert garbage.status_code == 400
        status = status_pb2.Status.FromString(garbage.content)
        assert status.code == 3  # INVALID_ARGUMENT
        assert "ExportMetricsServiceRequest" in status.message


async def test_grpc_answers(start_aggregator) -> None:
    import grpc
    from google.rpc import error_details_pb2
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc

    from sysmon.core.embedded import free_port

    req = metrics_service_pb2.ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    rm.resource.attributes.add(key="host.name", value={"string_value": "edge-2"})
    rm.scope_metrics.add().metrics.add(name="edge.load", unit="1").gauge.data_points.add(
        time_unix_nano=time.time_ns(), as_double=0.5)

    secured = await start_aggregator(token=TOKEN)
    async with grpc.aio.insecure_channel(secured.address) as ch:
        stub = metrics_service_pb2_grpc.MetricsServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.Export(req)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        ok = await stub.Export(req, metadata=(("authorization", f"Bearer {TOKEN}"),))
        assert ok.partial_success.rejected_data_points == 0

    # PostgreSQL away: UNAVAILABLE with a RetryInfo, which OTLP exporters wait on before sending again.
    dead = f"postgresql://sysmon@127.0.0.1:{free_port()}/sysmon"
    down = await start_aggregator(postgres_url=dead, wait_storage=False)
    async with grpc.aio.insecure_channel(down.address) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await metrics_service_pb2_grpc.MetricsServiceStub(ch).Export(req)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    details = dict(e.value.trailing_metadata() or ())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(details)
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    assert info.retry_delay.ToMilliseconds() >= 1
