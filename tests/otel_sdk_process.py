"""A program instrumented with the OpenTelemetry SDK, exporting over OTLP to sysmon (run by
tests/integration/test_otlp.py as a process of its own, as an application would).

    python tests/otel_sdk_process.py --protocol grpc|http --endpoint URL [--token T] [--delta]

It records, with resource host.name=$HOST service.name=checkout service.instance.id=checkout-1:
a counter app.requests {route=/pay} (5 three times, exported, then 5 more), an up-down counter
app.queue.depth (+3, -1), a gauge app.temperature (42.5) and a histogram app.latency (s; 0.02,
0.2, 2, 20, then 0.5, over buckets 0.1, 1, 10).
It exports twice (force_flush after each round) and exits 0 when both exports succeeded.
"""

from __future__ import annotations

import argparse
import sys

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider, UpDownCounter
from opentelemetry.sdk.metrics.export import AggregationTemporality, MetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource


def exporter(protocol: str, endpoint: str, token: str | None, delta: bool) -> MetricExporter:
    temporality = {Counter: AggregationTemporality.DELTA, Histogram: AggregationTemporality.DELTA,
                   UpDownCounter: AggregationTemporality.CUMULATIVE} if delta else None
    headers = {"authorization": f"Bearer {token}"} if token else None
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as Grpc

        return Grpc(endpoint=endpoint, insecure=True, headers=headers, preferred_temporality=temporality, timeout=20)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as Http

    return Http(endpoint=endpoint, headers=headers, preferred_temporality=temporality, timeout=20)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--protocol", choices=["grpc", "http"], required=True)
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--host", required=True)
    ap.add_argument("--token")
    ap.add_argument("--delta", action="store_true")
    a = ap.parse_args()
    # A reader that exports only when told (the interval is far longer than the program runs).
    reader = PeriodicExportingMetricReader(exporter(a.protocol, a.endpoint, a.token, a.delta),
                                           export_interval_millis=3_600_000)
    provider = MeterProvider(
        resource=Resource.create({"host.name": a.host, "service.name": "checkout",
                                  "service.instance.id": "checkout-1", "deployment.environment": "test"}),
        metric_readers=[reader],
        views=[View(instrument_name="app.latency", aggregation=ExplicitBucketHistogramAggregation([0.1, 1, 10]))],
    )
    meter = provider.get_meter("sysmon-test")
    requests = meter.create_counter("app.requests", unit="{request}")
    depth = meter.create_up_down_counter("app.queue.depth", unit="{item}")
    latency = meter.create_histogram("app.latency", unit="s")

    def temperature(_: CallbackOptions):
        yield Observation(42.5, {"sensor": "inlet"})

    meter.create_observable_gauge("app.temperature", callbacks=[temperature], unit="Cel")
    for _ in range(3):
        requests.add(5, {"route": "/pay"})
    depth.add(3)
    depth.add(-1)
    for v in (0.02, 0.2, 2.0, 20.0):
        latency.record(v)
    ok = provider.force_flush(30_000)
    requests.add(5, {"route": "/pay"})
    latency.record(0.5)
    ok = provider.force_flush(30_000) and ok
    provider.shutdown()
    print("exported" if ok else "export failed", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
