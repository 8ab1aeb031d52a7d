"""A batch after normalization: global series ids instead of stream refs, checked values.

The aggregator produces it; the storage writer, the hot tier and the bus consume it. Its bus
form is sysmon.v1.SamplesEvent, several to an entry of the samples topic (SamplesEvents), encoded
and decoded here so that every consumer agrees.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sysmon.core.metrics import Series
from sysmon.pb.v1 import events_pb2


@dataclass(slots=True)
class NormalizedBatch:
    host_id: str
    session_id: str
    seq: int
    # Every series any frame of this batch refers to.
    series: list[Series]
    times_ms: list[int] = field(default_factory=list)
    frame_ids: list[list[int]] = field(default_factory=list)
    frame_values: list[list[float]] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.host_id, self.session_id, self.seq)

    @property
    def sample_count(self) -> int:
        return sum(len(v) for v in self.frame_values)

    @property
    def min_ts(self) -> int:
        return min(self.times_ms)

    @property
    def max_ts(self) -> int:
        return max(self.times_ms)

    def samples(self) -> Iterator[tuple[int, int, float]]:
        """(series_id, time_ms, value) for every sample; for tests and small consumers."""
        for t, ids, values in zip(self.times_ms, self.frame_ids, self.frame_values, strict=True):
            for sid, v in zip(ids, values, strict=True):
                yield sid, t, v


def to_event(
    batch: NormalizedBatch, stored_unix_ms: int, series: Sequence[Series] | None = None,
    into: events_pb2.SamplesEvent | None = None,
) -> events_pb2.SamplesEvent:
    """The bus form of a batch, describing `series` (default: all of the batch's series); written
    into `into` (an entry of a SamplesEvents being built) when given."""
    ev = events_pb2.SamplesEvent() if into is None else into
    ev.host_id = batch.host_id
    ev.session_id = batch.session_id
    ev.seq = batch.seq
    ev.stored_unix_ms = stored_unix_ms
    for s in batch.series if series is None else series:
        ev.series.add(id=s.id, name=s.name, attributes=s.attributes, unit=s.unit, kind=s.kind)
    for t, ids, values in zip(batch.times_ms, batch.frame_ids, batch.frame_values, strict=True):
        ev.frames.add(time_unix_ms=t, series_ids=ids, values=values)
    return ev


def samples_events(payload: bytes) -> Sequence[events_pb2.SamplesEvent]:
    """The batches one entry of the samples topic carries (raises DecodeError when it is not one)."""
    return events_pb2.SamplesEvents.FromString(payload).events


def from_event(ev: events_pb2.SamplesEvent) -> NormalizedBatch:
    """The batch an event carries, with the series the event describes (see SeriesResolver)."""
    return NormalizedBatch(
        host_id=ev.host_id,
        session_id=ev.session_id,
        seq=ev.seq,
        series=[
            Series(id=s.id, host_id=ev.host_id, name=s.name, attributes=dict(s.attributes), unit=s.unit,
                   kind=s.kind)
            for s in ev.series
        ],
        times_ms=[f.time_unix_ms for f in ev.frames],
        frame_ids=[list(f.series_ids) for f in ev.frames],
        frame_values=[list(f.values) for f in ev.frames],
    )


class SeriesResolver:
    """Turns SamplesEvents into complete batches for a bus consumer.

    The aggregator describes a series on the bus the first time it publishes it (and again every
    few minutes), not in every event, which keeps events small. A consumer learns descriptions
    from the events it sees and asks the hot tier, which always has them before the event is
    published, for the ones it joined too late to see.
    """

    def __init__(self, lookup: Callable[[str], Awaitable[Mapping[int, Mapping[str, Any]]]]):
        self._lookup = lookup
        self.known: dict[int, Series] = {}
        self.unresolved = 0

    async def batch(self, ev: events_pb2.SamplesEvent) -> NormalizedBatch:
        for s in ev.series:
            self.known[s.id] = Series(s.id, ev.host_id, s.name, dict(s.attributes), s.unit, s.kind)
        ids = {i for f in ev.frames for i in f.series_ids}
        missing = ids - self.known.keys()
        if missing:
            for sid, d in (await self._lookup(ev.host_id)).items():
                self.known.setdefault(sid, Series(sid, ev.host_id, d["name"], dict(d["attributes"]), d["unit"],
                                                  d["kind"]))
        batch = from_event(ev)
        batch.series = [self.known[i] for i in sorted(ids) if i in self.known]
        self.unresolved += len(ids - self.known.keys())
        return batch
