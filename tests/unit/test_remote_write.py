"""Prometheus series -> sysmon series (sysmon.aggregator.remote_write), pure."""

from __future__ import annotations

import struct

import cramjam
import pytest

from sysmon.aggregator.admission import BadRequest, SeriesCache
from sysmon.aggregator.remote_write import decode, decompress, host_of, is_stale_marker, kind_of
from sysmon.core.metrics import COUNTER, GAUGE, Limits
from sysmon.pb.v1 import remote_write_pb2

NOW = 1_800_000_000_000
STALE = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]


@pytest.mark.parametrize(("labels", "host"), [
    ({"instance": "web-1:9100"}, "web-1"),
    ({"instance": "web-1:9100", "host": "db-7"}, "db-7"),
    ({"instance": "[::1]:9090"}, "1"),
    ({"instance": "10.0.0.5:80"}, "10.0.0.5"),
    ({"instance": "weird host/x:1"}, "weird-host-x"),
    ({}, "prometheus"),
])
def test_host_of(labels: dict[str, str], host: str) -> None:
    assert host_of(labels) == host


def test_kind_from_metadata_else_from_the_name() -> None:
    meta = {"http_requests": remote_write_pb2.PromMetricMetadata.COUNTER,
            "queue_depth_total": remote_write_pb2.PromMetricMetadata.GAUGE,
            "latency_seconds": remote_write_pb2.PromMetricMetadata.HISTOGRAM}
    assert kind_of("http_requests_total", meta) == COUNTER
    assert kind_of("queue_depth_total", meta) == GAUGE  # the sender says gauge, whatever the name
    assert kind_of("latency_seconds_bucket", meta) == COUNTER
    assert kind_of("latency_seconds_sum", meta) == COUNTER
    assert kind_of("node_network_receive_bytes_total", {}) == COUNTER
    assert kind_of("node_memory_MemFree_bytes", {}) == GAUGE


def test_stale_markers_are_not_samples_nor_errors() -> None:
    assert is_stale_marker(STALE)
    assert not is_stale_marker(float("nan"))
    req = remote_write_pb2.PromWriteRequest()
    ts = req.timeseries.add()
    ts.labels.add(name="__name__", value="up")
    ts.labels.add(name="instance", value="a:1")
    ts.samples.add(timestamp=NOW - 1000, value=1.0)
    ts.samples.add(timestamp=NOW, value=STALE)
    ts.samples.add(timestamp=NOW + 1, value=float("nan"))
    got = decode(req.SerializeToString(), Limits(), NOW, SeriesCache())
    assert got.sample_count == 1
    assert got.refused == 1
    assert "is not a finite number" in got.errors[0]


def test_decompress_checks_encoding_and_size() -> None:
    body = bytes(cramjam.snappy.compress_raw(b"x" * 1000))
    assert decompress(body, "snappy", 1000) == b"x" * 1000
    with pytest.raises(BadRequest, match="exceeds the limit of 999") as e:
        decompress(body, "snappy", 999)
    assert e.value.status == 400
    with pytest.raises(BadRequest) as e:
        decompress(body, None, 1000)
    assert e.value.status == 415
