"""Decoding one Push stream: stream refs -> global series, every limit checked at the edge.

Pure: a StreamDecoder holds the stream's symbol table and turns each MetricBatch into a
NormalizedBatch or a BatchError that says which limit was broken and whether the stream can
go on (a bad batch is rejected alone; a stream that changes host cannot continue).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from sysmon.aggregator.host_limits import HostSeries
from sysmon.core.batch import NormalizedBatch
from sysmon.core.metrics import (
    GAUGE,
    KINDS,
    MAX_SEQ,
    InvalidInput,
    Limits,
    Series,
    check_host_id,
    check_series,
    check_session_id,
    first_non_finite,
    format_series,
    series_id,
)
from sysmon.pb.v1 import metrics_pb2

# Frame layouts (ref sequences) remembered per stream; a collector has one or a few. A layout:
# its series ids in frame order, its series by id, and those as a list.
MAX_LAYOUTS = 64
Layout = tuple[list[int], dict[int, Series], list[Series]]
# Attribute sets repeat from host to host ({cpu: 0, state: user} on every machine): one dict each,
# shared by every stream's series, rather than a copy per series (most of the memory of a fleet's
# declarations).
_ATTRIBUTES: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
MAX_SHARED_ATTRIBUTES = 100_000


def shared_attributes(attrs: dict[str, str]) -> dict[str, str]:
    """The one dict with these attributes (never to be changed by its holders)."""
    key = tuple(sorted(attrs.items()))
    got = _ATTRIBUTES.get(key)
    if got is None:
        if len(_ATTRIBUTES) >= MAX_SHARED_ATTRIBUTES:
            _ATTRIBUTES.clear()
        got = _ATTRIBUTES[key] = attrs
    return got


class BatchError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, *, fatal: bool = False):
        super().__init__(message)
        self.code = code
        self.message = message
        self.fatal = fatal


def _invalid(seq: int, message: str) -> BatchError:
    return BatchError(grpc.StatusCode.INVALID_ARGUMENT, f"batch seq={seq}: {message}")


def _iso(ms: int) -> str:
    from datetime import UTC, datetime

    try:
        return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
    except (OverflowError, ValueError, OSError):
        return f"{ms} ms"


@dataclass
class StreamDecoder:
    limits: Limits
    # The hosts the caller's credential may speak for (None: any).
    may_send_for: Callable[[str], bool] | None = None
    # Active series per host over every stream; None: only the per-stream limit.
    host_series: HostSeries | None = None
    host_id: str | None = None
    session_id: str | None = None
    refs: dict[int, Series] = field(default_factory=dict)
    _held: set[int] = field(default_factory=set)
    _layouts: dict[tuple[int, ...], Layout] = field(default_factory=dict)

    def release(self) -> None:
        """The stream ended: its series no longer count against its host."""
        if self.host_series is not None and self.host_id is not None:
            self.host_series.release(self.host_id, list(self._held))
        self._held.clear()

    def decode(self, msg: metrics_pb2.MetricBatch, now_ms: int) -> NormalizedBatch:
        self._check_identity(msg)
        seq = msg.seq
        # Declarations first: they stay even when the batch is refused (see _declare).
        declare_error = self._declare(msg)
        if seq == 0:
            raise _invalid(seq, "seq must be at least 1")
        if seq > MAX_SEQ:
            # Stored as int8 with every committed seq: one out of range would fail a whole group commit.
            raise _invalid(seq, f"seq must be at most 2^63-1 ({MAX_SEQ})")
        if declare_error is not None:
            raise declare_error
        frames = msg.frames
        lim = self.limits
        if len(frames) > lim.max_frames_per_batch:
            raise BatchError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"batch seq={seq}: {len(frames)} frames exceed the limit of {lim.max_frames_per_batch}")
        total = sum(len(f.refs) for f in frames)
        if total > lim.max_samples_per_batch:
            raise BatchError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"batch seq={seq}: {total} samples exceed the limit of {lim.max_samples_per_batch}")
        lo = now_ms - int(lim.max_past.total_seconds() * 1000)
        hi = now_ms + int(lim.max_future.total_seconds() * 1000)
        times: list[int] = []
        frame_ids: list[list[int]] = []
        frame_values: list[list[float]] = []
        used: dict[int, Series] = {}
        for i, f in enumerate(frames):
            t = f.time_unix_ms
            if not lo <= t <= hi:
                raise BatchError(
                    grpc.StatusCode.OUT_OF_RANGE,
                    f"batch seq={seq}: frame {i} time {_iso(t)} is outside the accepted window "
                    f"[{_iso(lo)}, {_iso(hi)}] (at most {lim.max_past} old, {lim.max_future} ahead)",
                )
            refs = tuple(f.refs)
            values = list(f.values)
            if len(refs) != len(values):
                raise _invalid(seq, f"frame {i} has {len(refs)} refs but {len(values)} values")
            # A collector sends the same refs in the same order frame after frame: checked once per
            # stream (a ref never changes meaning on its stream), then looked up.
            layout = self._layouts.get(refs)
            if layout is None:
                layout = self._layout(seq, i, refs)
            bad = first_non_finite(values)
            if bad is not None:
                s = self.refs[refs[bad]]
                raise _invalid(seq, f"frame {i}: {format_series(s.name, s.attributes)} value {values[bad]} "
                                    "is not a finite number")
            used.update(layout[1])
            times.append(t)
            frame_ids.append(layout[0])
            frame_values.append(values)
        # A batch of one frame shares its layout's list of series: consumers that remember which
        # host's series they have seen check the list once, not every series of every batch.
        series = layout[2] if len(frames) == 1 else list(used.values())
        return NormalizedBatch(msg.host_id, msg.session_id, seq, series, times, frame_ids, frame_values)

    def _layout(self, seq: int, i: int, refs: tuple[int, ...]) -> Layout:
        """The series ids of a frame's refs, and its series by id; every check on the refs."""
        ref_set = set(refs)
        if len(ref_set) != len(refs):
            raise _invalid(seq, f"frame {i} repeats a series ref")
        unknown = ref_set - self.refs.keys()
        if unknown:
            raise _invalid(seq, f"frame {i} uses ref {min(unknown)}, which this stream never declared")
        series = [self.refs[r] for r in refs]
        by_id = {s.id: s for s in series}
        if len(by_id) != len(series):
            raise _invalid(seq, f"frame {i} gives one series more than one value (two refs declare it)")
        layout = ([s.id for s in series], by_id, list(by_id.values()))
        if len(self._layouts) >= MAX_LAYOUTS:
            self._layouts.clear()
        self._layouts[refs] = layout
        return layout

    def _check_identity(self, msg: metrics_pb2.MetricBatch) -> None:
        if self.host_id is None:
            try:
                check_host_id(msg.host_id, self.limits)
                check_session_id(msg.session_id, self.limits)
            except InvalidInput as e:
                raise BatchError(grpc.StatusCode.INVALID_ARGUMENT, str(e), fatal=True) from e
            if self.may_send_for is not None and not self.may_send_for(msg.host_id):
                raise BatchError(grpc.StatusCode.PERMISSION_DENIED,
                                 f"this credential may not send for host {msg.host_id!r}", fatal=True)
            self.host_id, self.session_id = msg.host_id, msg.session_id
        elif (msg.host_id, msg.session_id) != (self.host_id, self.session_id):
            raise BatchError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"a Push stream carries one host and session: got {msg.host_id}/{msg.session_id} "
                f"after {self.host_id}/{self.session_id}",
                fatal=True,
            )

    def _declare(self, msg: metrics_pb2.MetricBatch) -> BatchError | None:
        """Add this batch's valid declarations; the first invalid one rejects the batch.

        Valid declarations stay even when the batch is rejected: the collector counts them as
        declared on this stream and will not declare them again.
        """
        seq = msg.seq
        lim = self.limits
        if len(msg.series) > lim.max_series_per_batch:
            return BatchError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"batch seq={seq}: declares {len(msg.series)} series, more than "
                              f"{lim.max_series_per_batch}")
        error: BatchError | None = None
        assert self.host_id is not None
        for d in msg.series:
            attrs = dict(d.attributes)
            try:
                if d.ref == 0:
                    raise InvalidInput("series.ref", f"{d.name}: ref 0 is reserved")
                check_series(d.name, attrs, d.unit, lim)
                if d.kind and d.kind not in KINDS:  # 0, the proto default, means gauge
                    raise InvalidInput("series.kind", f"{d.name}: unknown kind {d.kind}")
            except InvalidInput as e:
                error = error or _invalid(seq, str(e))
                continue
            kind = d.kind or GAUGE
            prev = self.refs.get(d.ref)
            if prev is not None:
                if (prev.name, prev.unit, prev.kind) != (d.name, d.unit, kind) or prev.attributes != attrs:
                    was = format_series(prev.name, prev.attributes)
                    error = error or _invalid(seq, f"ref {d.ref} is already {was} on this stream; it cannot become "
                                                   f"{format_series(d.name, attrs)}")
                continue
            if len(self.refs) >= lim.max_series_per_stream:
                error = error or BatchError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"batch seq={seq}: more than {lim.max_series_per_stream} series on one stream",
                )
                continue
            sid = series_id(self.host_id, d.name, attrs)
            if sid not in self._held and self.host_series is not None:
                if not self.host_series.acquire(self.host_id, sid):
                    error = error or BatchError(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"batch seq={seq}: host {self.host_id} already has {self.host_series.count(self.host_id)} "
                        f"active series over its streams, the limit per host ({lim.max_series_per_host})",
                    )
                    continue
                self._held.add(sid)
            self.refs[d.ref] = Series(sid, self.host_id, sys.intern(d.name), shared_attributes(attrs),
                                      sys.intern(d.unit), kind)
        return error
