"""Building remote write requests as a Prometheus sender does, and reading back what sysmon stored."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
import cramjam

from sysmon.core.metrics import series_id
from sysmon.core.storage import raw
from sysmon.pb.v1 import remote_write_pb2

HEADERS = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
           "X-Prometheus-Remote-Write-Version": "0.1.0"}


def write_request(series: Sequence[tuple[Mapping[str, str], Sequence[tuple[int, float]]]]) -> bytes:
    """A snappy-compressed WriteRequest: each series' labels (with __name__) and (ms, value) samples."""
    req = remote_write_pb2.PromWriteRequest()
    for labels, samples in series:
        ts = req.timeseries.add()
        for k in sorted(labels):
            ts.labels.add(name=k, value=labels[k])
        for t, v in samples:
            ts.samples.add(timestamp=t, value=v)
    return bytes(cramjam.snappy.compress_raw(req.SerializeToString()))


async def stored(dsn: str, host: str, name: str, attrs: Mapping[str, str],
                 within: timedelta = timedelta(hours=2)) -> list[tuple[int, float]]:
    """The raw samples of one series, (ms, value) by time."""
    now = datetime.now(UTC)
    conn = await asyncpg.connect(dsn)
    try:
        got = await raw.read(conn, [series_id(host, name, attrs)], now - within, now + timedelta(minutes=10))
    finally:
        await conn.close()
    ts, vs = got.get(series_id(host, name, attrs), ([], []))
    return [(int(t), float(v)) for t, v in zip(ts, vs, strict=True)]
