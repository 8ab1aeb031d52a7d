"""Prometheus remote write 1.0: a snappy-compressed WriteRequest -> Samples (see admission.py).

Pure. How a Prometheus series becomes a sysmon series:

| Prometheus | sysmon |
|---|---|
| `__name__` | the metric name, unchanged (`node_cpu_seconds_total`); names with `:` (recording rules) are refused |
| label `host` | the host; else the host part of `instance` (`web-1:9100` -> `web-1`); else `prometheus` |
| every other label (`job`, `instance`, ...) | an attribute of the same name |
| metadata type COUNTER, or a name ending `_total`, `_count`, `_sum`, `_bucket` | kind counter, stored as sent |
| anything else | kind gauge |
| staleness marker (Prometheus's special NaN) | not stored; counted in sysmon_aggregator_stale_markers_total |

Every limit a Push batch meets applies: name and attribute sizes, attribute count, the accepted
time window, finite values. A request that cannot be read at all is refused whole (400); a
sample that breaks a limit is refused alone, and the rest of the request is stored.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import cramjam
from google.protobuf.message import DecodeError

from sysmon.aggregator import telemetry
from sysmon.aggregator.admission import BadRequest, Samples, SeriesCache, clean_host
from sysmon.core.metrics import COUNTER, GAUGE, InvalidInput, Limits, Series, check_series, format_series
from sysmon.pb.v1 import remote_write_pb2

STALE_NAN_BITS = 0x7FF0000000000002
COUNTER_SUFFIXES = ("_total", "_count", "_sum", "_bucket")
DEFAULT_HOST = "prometheus"


def decompress(body: bytes, encoding: str | None, max_bytes: int) -> bytes:
    if (encoding or "").lower() != "snappy":
        raise BadRequest(f"Content-Encoding must be snappy (remote write 1.0), not {encoding or 'absent'}", 415)
    try:
        size = cramjam.snappy.decompress_raw_len(body)
    except Exception as e:  # cramjam raises its own DecompressionError
        raise BadRequest(f"body is not snappy block format: {e}") from e
    if size > max_bytes:
        raise BadRequest(f"decompressed body of {size} bytes exceeds the limit of {max_bytes}")
    try:
        return bytes(cramjam.snappy.decompress_raw(body))
    except Exception as e:
        raise BadRequest(f"body is not snappy block format: {e}") from e


def host_of(labels: dict[str, str]) -> str:
    """The sysmon host of a series: its `host` label, else the host part of `instance`."""
    host = labels.get("host")
    if not host:
        instance = labels.get("instance", "")
        host = instance.rsplit(":", 1)[0] if instance.count(":") == 1 or instance.startswith("[") else instance
        host = host.strip("[]")
    return clean_host(host, DEFAULT_HOST)


def is_stale_marker(v: float) -> bool:
    return math.isnan(v) and struct.unpack("<Q", struct.pack("<d", v))[0] == STALE_NAN_BITS


def kind_of(name: str, metadata: dict[str, int]) -> int:
    t = metadata.get(name)
    if t is None:
        # A counter family's metadata names the family (`http_requests`), its series add `_total`.
        for suffix in COUNTER_SUFFIXES:
            if name.endswith(suffix):
                t = metadata.get(name[: -len(suffix)])
                if t is None:
                    return COUNTER
                break
    if t in (remote_write_pb2.PromMetricMetadata.COUNTER, remote_write_pb2.PromMetricMetadata.HISTOGRAM,
             remote_write_pb2.PromMetricMetadata.SUMMARY):
        # A histogram's and a summary's _count, _sum and _bucket only ever grow; their quantiles do not.
        return COUNTER if name.endswith(COUNTER_SUFFIXES) else GAUGE
    return GAUGE


def decode(data: bytes, limits: Limits, now_ms: int, cache: SeriesCache,
           metadata: dict[str, int] | None = None) -> Samples:
    """The samples of a decompressed WriteRequest. `metadata` (family name -> type) remembers what
    earlier requests said; Prometheus sends metadata apart from samples."""
    try:
        req = remote_write_pb2.PromWriteRequestRaw.FromString(data)
    except DecodeError as e:
        raise BadRequest(f"body is not a remote write WriteRequest: {e}") from e
    meta = metadata if metadata is not None else {}
    for m in req.metadata:
        if m.metric_family_name and meta.get(m.metric_family_name) != m.type:
            meta[m.metric_family_name] = m.type
            cache.resolved.clear()  # kinds may change with what the sender now says
    out = Samples()
    lo = now_ms - int(limits.max_past.total_seconds() * 1000)
    hi = now_ms + int(limits.max_future.total_seconds() * 1000)
    resolved = cache.resolved
    stale = 0
    for ts in req.timeseries:
        if ts.histograms:
            labels = dict(_pairs(ts.labels))
            out.refuse(f"{format_series(labels.pop('__name__', ''), labels)}: native histograms are not supported",
                       len(ts.histograms))
        samples = ts.samples
        if not samples:
            continue
        # A sender repeats the same series request after request: what its labels make is looked up
        # by their encoded bytes.
        key = tuple(ts.labels)
        got = resolved.get(key)
        if got is None:
            got = cache.remember(key, _resolve(_pairs(key), limits, cache, meta))
        if type(got) is str:
            out.refuse(got, len(samples))
            continue
        host, series = got
        hs = out.host(host)
        for sample in samples:
            v, t = sample.value, sample.timestamp
            if v - v != 0.0:  # NaN or infinity (the finite case stays cheap)
                if is_stale_marker(v):
                    stale += 1
                else:
                    out.refuse(f"{format_series(series.name, series.attributes)} at {t}: value {v} is not a finite "
                               "number")
                continue
            if not lo <= t <= hi:
                out.refuse(f"{format_series(series.name, series.attributes)}: time {t} is outside the accepted "
                           f"window (at most {limits.max_past} old, {limits.max_future} ahead)")
                continue
            if not hs.add(series, t, v):
                out.refuse(f"{format_series(series.name, series.attributes)}: two samples at time {t}")
        if not hs.frames:
            del out.hosts[host]
    if stale:
        telemetry.STALE_MARKERS.inc(stale)
    return out


def _pairs(encoded: Sequence[bytes]) -> list[tuple[str, str]]:
    out = []
    for raw in encoded:
        try:
            lb = remote_write_pb2.PromLabel.FromString(raw)
        except DecodeError as e:
            raise BadRequest(f"body is not a remote write WriteRequest: a label does not decode ({e})") from e
        out.append((lb.name, lb.value))
    return out


def _resolve(pairs: list[tuple[str, str]], limits: Limits, cache: SeriesCache,
             meta: dict[str, int]) -> tuple[str, Series] | str:
    """A series' host and Series from its label pairs, or the reason it is refused."""
    labels = dict(pairs)
    name = labels.pop("__name__", "")
    host = host_of(labels)
    labels.pop("host", None)
    try:
        check_series(name, labels, "", limits)
    except InvalidInput as e:
        return str(e)
    return host, cache.get(host, name, labels, "", kind_of(name, meta))
