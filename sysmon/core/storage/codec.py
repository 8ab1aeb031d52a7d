"""A sealed block: one series' samples over one time block, encoded losslessly with pcodec.

Pure. Timestamps (int64 Unix ms) and values (float64) are two pcodec streams: pcodec picks delta
encoding for timestamps (regular intervals cost next to nothing, jitter of a few ms about half a
byte) and, for values, binning with offsets, multiples and int-like floats, which beat XOR
(Gorilla, Prometheus) and byte-shuffle + zstd on system metrics (bench/storage.py compares them).
Every float64 round-trips bit for bit (±0, subnormals, the extremes); NaN and infinities never
reach storage (the wire contract), and encode refuses them.

The block's summary (count, first and last time, min, max, sum, last value) is stored beside the
encoded streams, so a block can be described, or its newest value read, without decoding it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pcodec import ChunkConfig, standalone

from sysmon.core import numeric

# Level 8 (pcodec's default) is within a few per cent of the best on system metrics, at a fraction
# of the time of the highest levels.
_CONFIG = ChunkConfig(compression_level=8)


@dataclass(frozen=True, slots=True)
class Block:
    count: int
    t_first: int  # Unix ms
    t_last: int
    vmin: float
    vmax: float
    vsum: float  # correctly rounded (math.fsum), saturating at the largest float64
    vlast: float
    ts_data: bytes
    val_data: bytes

    @property
    def encoded_bytes(self) -> int:
        return len(self.ts_data) + len(self.val_data)


def encode(ts: np.ndarray, values: np.ndarray) -> Block:
    """One series' samples, sorted by time with one value per time, as a block."""
    ts = np.ascontiguousarray(ts, dtype=np.int64)
    values = np.ascontiguousarray(values, dtype=np.float64)
    if ts.ndim != 1 or ts.shape != values.shape or not len(ts):
        raise ValueError("a block needs as many timestamps as values, at least one")
    if len(ts) > 1 and not bool(np.all(ts[1:] > ts[:-1])):
        raise ValueError("a block's timestamps must be strictly increasing")
    if not bool(np.all(np.isfinite(values))):
        raise ValueError("a block holds finite values only")
    return Block(
        count=len(ts), t_first=int(ts[0]), t_last=int(ts[-1]), vmin=float(values.min()), vmax=float(values.max()),
        vsum=numeric.total(values.tolist()), vlast=float(values[-1]),
        ts_data=standalone.simple_compress(ts, _CONFIG), val_data=standalone.simple_compress(values, _CONFIG),
    )


def decode(ts_data: bytes, val_data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(timestamps int64 ms, values float64) of an encoded block."""
    ts = standalone.simple_decompress(ts_data)
    values = standalone.simple_decompress(val_data)
    if ts.dtype != np.int64 or values.dtype != np.float64 or ts.shape != values.shape:
        raise ValueError("not a sealed block: unexpected streams")
    return ts, values


def merge(ts_a: np.ndarray, values_a: np.ndarray, ts_b: np.ndarray, values_b: np.ndarray) -> tuple[
    np.ndarray, np.ndarray, int
]:
    """Samples of `a` (kept) and `b` (late arrivals) as one sorted series, one value per time:
    where both have a time, `a`'s value stays (the first written wins, as in the row store).
    Returns (ts, values, how many of `b` were dropped as duplicates)."""
    ts = np.concatenate([ts_a, ts_b])
    values = np.concatenate([values_a, values_b])
    # A stable sort keeps a before b at equal times; the first of each time is kept.
    order = np.argsort(ts, kind="stable")
    ts, values = ts[order], values[order]
    keep = np.ones(len(ts), dtype=bool)
    keep[1:] = ts[1:] != ts[:-1]
    return ts[keep], values[keep], int(len(keep) - keep.sum())
