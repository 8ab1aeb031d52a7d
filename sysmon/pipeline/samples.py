"""What the handler takes out of a message, checked, as pure functions.

A message on the queue is input from whoever may send to it, so it is checked as the aggregator
checks a collector's batch (the limits of sysmon.core.metrics) before anything is stored: one
broken event fails its whole message, with the reason, and nothing of it is stored.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from sysmon.core.metrics import (
    KINDS,
    MAX_SEQ,
    InvalidInput,
    Limits,
    canonical_attributes,
    check_host_id,
    check_series,
    check_session_id,
    first_non_finite,
    series_id,
)
from sysmon.pb.v1 import events_pb2
from sysmon.pipeline.wire import WireError

BUCKET_MS = 60_000  # the 1-minute tier's buckets, aligned to the epoch
# timestamptz holds far more; a sample from before 1970 or after 9999 is a broken clock or a forgery.
MAX_TIME_MS = 253_402_300_799_999
LIMITS = Limits()

# (host_id, session_id, seq, first frame's time, its first series): a batch, or the part of one that
# the exporter sent in one message when the batch alone was larger than a message. Parts hold
# disjoint samples, so their first samples differ.
PartKey = tuple[str, str, int, int, int]


@dataclass(frozen=True, slots=True)
class SeriesRow:
    series_id: int
    host_id: str
    name: str
    attributes: str  # canonical JSON
    unit: str
    kind: int
    metric_key: int


@dataclass(slots=True)
class Samples:
    """Flat columns of the samples of some events, for one unnest() in PostgreSQL."""

    series_ids: list[int] = field(default_factory=list)
    times_ms: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    series: dict[int, SeriesRow] = field(default_factory=dict)
    # (metric_key, bucket start in ms) of every fleet row these samples touch
    fleet_buckets: set[tuple[int, int]] = field(default_factory=set)

    def __len__(self) -> int:
        return len(self.values)


def metric_key(name: str, attributes: Mapping[str, str]) -> int:
    """A signed 64-bit key for (name, attributes) without the host: one fleet summary row per minute."""
    return int.from_bytes(hashlib.blake2b(attributes_json(name, attributes).encode(), digest_size=8).digest(),
                          "big", signed=True)


def attributes_json(name: str, attributes: Mapping[str, str]) -> str:
    return json.dumps([name, canonical_attributes(attributes)], separators=(",", ":"))


def part_key(ev: events_pb2.SamplesEvent) -> PartKey:
    if not ev.frames:
        return (ev.host_id, ev.session_id, ev.seq, 0, 0)
    f = ev.frames[0]
    return (ev.host_id, ev.session_id, ev.seq, f.time_unix_ms, f.series_ids[0] if f.series_ids else 0)


class Catalog:
    """The series descriptions this container has checked, and those it knows are stored.

    Nearly every description in a message was seen in an earlier one: compared (in C) with the one
    checked then, it is not checked and hashed again; a series stored once is not inserted again.
    """

    MAX_SERIES = 200_000  # then it starts over (memory stays bounded)

    def __init__(self) -> None:
        self._rows: dict[int, tuple[str, events_pb2.SeriesInfo, SeriesRow]] = {}
        self.stored: set[int] = set()

    def row(self, host_id: str, s: events_pb2.SeriesInfo) -> SeriesRow:
        hit = self._rows.get(s.id)
        if hit is not None and hit[0] == host_id and hit[1] == s:
            return hit[2]
        check_series(s.name, s.attributes, s.unit, LIMITS)
        if s.kind not in KINDS:
            raise InvalidInput("series.kind", f"{s.name}: kind {s.kind} is not one of {sorted(KINDS)}")
        attrs = dict(s.attributes)
        if s.id != series_id(host_id, s.name, attrs):
            raise InvalidInput("series.id", f"{s.name}: id {s.id} is not the id of this host's series")
        row = SeriesRow(s.id, host_id, s.name, json.dumps(dict(canonical_attributes(attrs)), separators=(",", ":")),
                        s.unit, s.kind, metric_key(s.name, attrs))
        if len(self._rows) >= self.MAX_SERIES:
            self._rows.clear()
            self.stored.clear()
        info = events_pb2.SeriesInfo()
        info.CopyFrom(s)
        self._rows[s.id] = (host_id, info, row)
        return row


@dataclass
class Checked:
    events: list[events_pb2.SamplesEvent]
    # Every series the message describes; a series is described once per message (per host), in
    # whichever of its events comes first.
    rows: dict[int, SeriesRow]


def check(events: Sequence[events_pb2.SamplesEvent], catalog: Catalog | None = None) -> Checked:
    """The events of one message, each checked whole; WireError names the first thing wrong."""
    catalog = Catalog() if catalog is None else catalog
    rows: dict[int, SeriesRow] = {}
    described: dict[str, set[int]] = {}
    for i, ev in enumerate(events):
        try:
            check_host_id(ev.host_id, LIMITS)
            check_session_id(ev.session_id, LIMITS)
            if ev.seq > MAX_SEQ:
                raise InvalidInput("seq", f"{ev.seq} is above {MAX_SEQ}")
            ids = described.setdefault(ev.host_id, set())
            for s in ev.series:
                rows[s.id] = catalog.row(ev.host_id, s)
                ids.add(s.id)
        except InvalidInput as e:
            raise WireError(f"event {i} ({ev.host_id[:64]!r} seq {ev.seq}): {e}") from None
    for i, ev in enumerate(events):
        try:
            _check_frames(ev, described[ev.host_id])
        except InvalidInput as e:
            raise WireError(f"event {i} ({ev.host_id[:64]!r} seq {ev.seq}): {e}") from None
    return Checked(list(events), rows)


def _check_frames(ev: events_pb2.SamplesEvent, described: set[int]) -> None:
    samples = 0
    for f in ev.frames:
        if not 0 <= f.time_unix_ms <= MAX_TIME_MS:
            raise InvalidInput("frames.time_unix_ms", f"{f.time_unix_ms} is outside 1970-9999")
        if len(f.series_ids) != len(f.values):
            raise InvalidInput("frames", f"{len(f.series_ids)} series ids but {len(f.values)} values")
        bad = first_non_finite(f.values)
        if bad is not None:
            raise InvalidInput("frames.values", f"value {f.values[bad]} of series {f.series_ids[bad]} is not finite")
        if not described.issuperset(f.series_ids):
            missing = sorted(set(f.series_ids) - described)
            raise InvalidInput("frames.series_ids",
                               f"series {missing[:5]} of this host are not described in the message")
        samples += len(f.values)
    if samples > LIMITS.max_samples_per_batch:
        raise InvalidInput("frames", f"{samples} samples, more than {LIMITS.max_samples_per_batch}")


def flatten(events: Iterable[events_pb2.SamplesEvent], rows: Mapping[int, SeriesRow]) -> Samples:
    """The samples of checked events as columns, with the series they belong to."""
    out = Samples()
    used: set[int] = set()
    for ev in events:
        for f in ev.frames:
            n = len(f.values)
            out.series_ids.extend(f.series_ids)
            out.times_ms.extend([f.time_unix_ms] * n)
            out.values.extend(f.values)
            bucket = f.time_unix_ms - f.time_unix_ms % BUCKET_MS
            used.update(f.series_ids)
            out.fleet_buckets.update((rows[i].metric_key, bucket) for i in f.series_ids)
    out.series = {i: rows[i] for i in used}
    return out
