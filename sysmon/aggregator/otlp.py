"""OTLP metrics in: ExportMetricsServiceRequest -> Samples (see admission.py), over OTLP/gRPC
(MetricsService.Export, on the aggregator's gRPC port) and OTLP/HTTP protobuf (POST /v1/metrics).

How OpenTelemetry data points become sysmon series:

| OTLP | sysmon |
|---|---|
| resource `host.name` | the host (else `otlp`) |
| resource `service.name`, `service.namespace`, `service.instance.id` | attributes of every series of the resource |
| other resource attributes, scope, exemplars | not stored |
| data point attributes | attributes (strings; bool, int, double as text; arrays and maps as JSON) |
| Gauge | the metric's name and unit, kind gauge |
| Sum, cumulative, monotonic | kind counter, stored as sent |
| Sum, cumulative, not monotonic (an UpDownCounter) | kind gauge: the value is a level |
| Sum, delta | a running total per series, kept here (1); counter when monotonic, else gauge |
| Histogram (explicit buckets) | `<name>_count`, `<name>_sum` (counters), `<name>_bucket` with attribute `le` (2) |
| Summary | `<name>_count`, `<name>_sum` (counters) and `<name>` with attribute `quantile` (gauge) |
| ExponentialHistogram | refused, counted in partial_success |
| a point flagged "no recorded value" | not stored |

(1) The total starts again at 0 when the aggregator restarts, which rate functions read as a
counter reset; a request that is not stored is taken out of the totals again.
(2) Every part keeps the metric's unit, and the suffixes are Prometheus's, so that the Prometheus
name of `http.server.duration_bucket` in `s` is `http_server_duration_seconds_bucket`
(sysmon.core.promql.names). `le` is the bucket's upper bound as Prometheus writes it (`0.005`, `1`, `+Inf` last) and the
count is cumulative over the buckets below, as Prometheus's `_bucket`; delta histograms are summed
up as delta sums are.

Answers: OK (HTTP 200) once stored, with partial_success counting the data points refused and
the first reasons; INVALID_ARGUMENT (400) for a request that cannot be read; UNAUTHENTICATED,
PERMISSION_DENIED; RESOURCE_EXHAUSTED (429) and UNAVAILABLE (503) with a retry delay.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2

from sysmon.aggregator import auth, telemetry
from sysmon.aggregator.admission import Admission, BadRequest, HostSamples, Refused, Samples, SeriesCache, clean_host
from sysmon.aggregator.ingest import now_ms
from sysmon.core.metrics import COUNTER, GAUGE, InvalidInput, Limits, check_series, first_non_finite, format_series

PROTOBUF = "application/x-protobuf"
DEFAULT_HOST = "otlp"
RESOURCE_ATTRIBUTES = ("service.name", "service.namespace", "service.instance.id")
DELTA = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
NO_VALUE = metrics_pb2.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK
GRPC_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
              403: grpc.StatusCode.PERMISSION_DENIED, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
              415: grpc.StatusCode.INVALID_ARGUMENT, 429: grpc.StatusCode.RESOURCE_EXHAUSTED,
              503: grpc.StatusCode.UNAVAILABLE}
_RUNNING_MAX = 1_000_000


def http_body(body: bytes, content_type: str | None, encoding: str | None, max_bytes: int) -> bytes:
    """The protobuf of an OTLP/HTTP request (gzip or deflate undone, within the size limit)."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype != PROTOBUF:
        raise BadRequest(f"Content-Type must be {PROTOBUF} (OTLP/HTTP protobuf), not {ctype or 'absent'}", 415)
    enc = (encoding or "identity").lower()
    if enc == "identity":
        return body
    if enc not in ("gzip", "deflate"):
        raise BadRequest(f"Content-Encoding {enc} is not supported (gzip, deflate or none)", 415)
    d = zlib.decompressobj(wbits=31 if enc == "gzip" else 15)
    try:
        data = d.decompress(body, max_bytes + 1)
    except (zlib.error, gzip.BadGzipFile) as e:
        raise BadRequest(f"body is not {enc}: {e}") from e
    if len(data) > max_bytes:
        raise BadRequest(f"decompressed body exceeds the limit of {max_bytes} bytes")
    return data


def request(data: bytes) -> metrics_service_pb2.ExportMetricsServiceRequest:
    try:
        return metrics_service_pb2.ExportMetricsServiceRequest.FromString(data)
    except DecodeError as e:
        raise BadRequest(f"body is not an OTLP ExportMetricsServiceRequest: {e}") from e


def response(samples: Samples) -> metrics_service_pb2.ExportMetricsServiceResponse:
    out = metrics_service_pb2.ExportMetricsServiceResponse()
    if samples.refused:
        out.partial_success.rejected_data_points = samples.refused
        out.partial_success.error_message = samples.summary()
    return out


def retry_status(code: grpc.StatusCode, message: str, retry_after_s: float) -> bytes:
    """grpc-status-details-bin: a google.rpc.Status of the call's code and message with a RetryInfo."""
    info = error_details_pb2.RetryInfo()
    info.retry_delay.FromMilliseconds(max(1, round(retry_after_s * 1000)))
    status = status_pb2.Status(code=code.value[0], message=message)
    status.details.add().Pack(info)
    return status.SerializeToString()


def _text(v: common_pb2.AnyValue) -> str:
    which = v.WhichOneof("value")
    if which == "string_value":
        return v.string_value
    if which == "bool_value":
        return "true" if v.bool_value else "false"
    if which == "int_value":
        return str(v.int_value)
    if which == "double_value":
        return repr(v.double_value)
    return json.dumps(_json(v), separators=(",", ":"))


def _json(v: common_pb2.AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_json(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _json(kv.value) for kv in v.kvlist_value.values}
    if which == "bytes_value":
        return v.bytes_value.hex()
    return None if which is None else _text(v)


def attributes(kvs: Iterable[common_pb2.KeyValue]) -> dict[str, str]:
    return {kv.key: _text(kv.value) for kv in kvs}


def bound(b: float) -> str:
    """An upper bound as Prometheus writes `le` (Go's FormatFloat 'f', -1): 0.005, 1, 250, +Inf."""
    if b == float("inf"):
        return "+Inf"
    text = repr(float(b))
    return text[:-2] if text.endswith(".0") else text


class Decoder:
    """Holds what outlives a request: the series cache and the running totals of delta sums."""

    def __init__(self, cache: SeriesCache):
        self.cache = cache
        self.running: dict[int, float] = {}

    def decode(self, req: metrics_service_pb2.ExportMetricsServiceRequest, limits: Limits, now: int) -> Samples:
        out = Samples()
        lo = now - int(limits.max_past.total_seconds() * 1000)
        hi = now + int(limits.max_future.total_seconds() * 1000)
        for rm in req.resource_metrics:
            res = attributes(rm.resource.attributes)
            host = clean_host(res.get("host.name", ""), DEFAULT_HOST)
            common = {k: res[k] for k in RESOURCE_ATTRIBUTES if k in res}
            point = _Points(self, out, out.host(host), host, common, limits, lo, hi)
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    point.metric(m)
            if not out.hosts[host].frames:
                del out.hosts[host]
        return out


class _Points:
    """The data points of one resource into its host's samples."""

    def __init__(self, decoder: Decoder, out: Samples, hs: HostSamples, host: str, common: Mapping[str, str],
                 limits: Limits, lo: int, hi: int):
        self.d, self.out, self.hs, self.host, self.common = decoder, out, hs, host, common
        self.limits, self.lo, self.hi = limits, lo, hi

    def metric(self, m: metrics_pb2.Metric) -> None:
        which = m.WhichOneof("data")
        if which == "gauge":
            for p in m.gauge.data_points:
                self.number(m.name, m.unit, GAUGE, p, delta=False)
        elif which == "sum":
            kind = COUNTER if m.sum.is_monotonic else GAUGE
            for p in m.sum.data_points:
                self.number(m.name, m.unit, kind, p, delta=m.sum.aggregation_temporality == DELTA)
        elif which == "histogram":
            delta = m.histogram.aggregation_temporality == DELTA
            for p in m.histogram.data_points:
                self.histogram(m.name, m.unit, p, delta)
        elif which == "summary":
            for p in m.summary.data_points:
                self.summary(m.name, m.unit, p)
        elif which == "exponential_histogram":
            n = len(m.exponential_histogram.data_points)
            self.out.refuse(f"{m.name}: exponential histograms are not supported", n)
        else:
            self.out.refuse(f"{m.name}: a metric with no data", 1)

    def _time(self, name: str, attrs: Mapping[str, str], t_ns: int) -> int | None:
        t = t_ns // 1_000_000
        if not self.lo <= t <= self.hi:
            self.out.refuse(f"{format_series(name, attrs)}: time {t} ms is outside the accepted window "
                            f"(at most {self.limits.max_past} old, {self.limits.max_future} ahead)")
            return None
        return t

    def _put(self, values: list[tuple[str, dict[str, str], str, int, float, bool]], t_ns: int, point: str) -> None:
        """All of one data point's series, or none of them: (name, attributes, unit, kind, value, delta)."""
        first_name, first_attrs = values[0][0], values[0][1]
        t = self._time(first_name, first_attrs, t_ns)
        if t is None:
            return
        bad = first_non_finite(v for *_, v, _ in values)
        if bad is not None:
            name, attrs, *_ = values[bad]
            self.out.refuse(f"{format_series(name, attrs)}: value {values[bad][4]} is not a finite number")
            return
        series = []
        for name, attrs, unit, kind, v, delta in values:
            try:
                check_series(name, attrs, unit, self.limits)
            except InvalidInput as e:
                self.out.refuse(f"{point}: {e}")
                return
            series.append((self.d.cache.get(self.host, name, attrs, unit, kind), v, delta))
        if any(self.hs.has(s.id, t) for s, _, _ in series):
            self.out.refuse(f"{format_series(first_name, first_attrs)}: two data points at time {t} ms")
            return
        for s, v, delta in series:
            if delta:
                v = self._accumulate(s.id, v)
            self.hs.add(s, t, v)

    def _accumulate(self, sid: int, v: float) -> float:
        running = self.d.running
        before = running.get(sid)
        if before is None and len(running) >= _RUNNING_MAX:
            running.clear()
        total = (before or 0.0) + v
        running[sid] = total

        def undo() -> None:
            if before is None:
                running.pop(sid, None)
            else:
                running[sid] = before

        self.out.undo.append(undo)
        return total

    def _attrs(self, p: Any, **extra: str) -> dict[str, str]:
        return {**self.common, **attributes(p.attributes), **extra}

    def number(self, name: str, unit: str, kind: int, p: metrics_pb2.NumberDataPoint, *, delta: bool) -> None:
        if p.flags & NO_VALUE:
            return
        v = float(p.as_int) if p.WhichOneof("value") == "as_int" else p.as_double
        self._put([(name, self._attrs(p), unit, kind, v, delta)], p.time_unix_nano, name)

    def histogram(self, name: str, unit: str, p: metrics_pb2.HistogramDataPoint, delta: bool) -> None:
        if p.flags & NO_VALUE:
            return
        attrs = self._attrs(p)
        counts, bounds = list(p.bucket_counts), list(p.explicit_bounds)
        if counts and len(counts) != len(bounds) + 1:
            self.out.refuse(f"{format_series(name, attrs)}: {len(counts)} bucket counts for {len(bounds)} bounds "
                            "(there must be one more count than bounds)")
            return
        values = [(f"{name}_count", attrs, unit, COUNTER, float(p.count), delta),
                  (f"{name}_sum", attrs, unit, COUNTER, p.sum, delta)]
        total = 0
        for b, c in zip([*bounds, float("inf")], counts, strict=False):
            total += c
            values.append((f"{name}_bucket", {**attrs, "le": bound(b)}, unit, COUNTER, float(total), delta))
        self._put(values, p.time_unix_nano, name)

    def summary(self, name: str, unit: str, p: metrics_pb2.SummaryDataPoint) -> None:
        if p.flags & NO_VALUE:
            return
        attrs = self._attrs(p)
        values = [(f"{name}_count", attrs, unit, COUNTER, float(p.count), False),
                  (f"{name}_sum", attrs, unit, COUNTER, p.sum, False)]
        values += [(name, {**attrs, "quantile": bound(q.quantile)}, unit, GAUGE, q.value, False)
                   for q in p.quantile_values]
        self._put(values, p.time_unix_nano, name)


class OtlpMetricsServicer(metrics_service_pb2_grpc.MetricsServiceServicer):
    """OTLP/gRPC opentelemetry.proto.collector.metrics.v1.MetricsService/Export."""

    def __init__(self, admission: Admission, decoder: Decoder):
        self.admission = admission
        self.decoder = decoder

    async def Export(self, request: metrics_service_pb2.ExportMetricsServiceRequest,
                     context: grpc.aio.ServicerContext) -> metrics_service_pb2.ExportMetricsServiceResponse:
        samples = self.decoder.decode(request, self.admission.limits, now_ms())
        try:
            await self.admission.admit(samples, auth.current(), "otlp")
        except Refused as e:
            telemetry.FOREIGN_REQUESTS.labels("otlp", str(e.status)).inc()
            code = GRPC_CODES.get(e.status, grpc.StatusCode.UNKNOWN)
            if e.retry_after_s:
                # OTLP exporters take the delay from a google.rpc.RetryInfo in the status details.
                context.set_trailing_metadata((("grpc-status-details-bin", retry_status(code, e.message,
                                                                                      e.retry_after_s)),))
            await context.abort(code, e.message)
        telemetry.FOREIGN_REQUESTS.labels("otlp", "200").inc()
        return response(samples)
