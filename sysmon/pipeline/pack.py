"""Events into SQS messages and messages into SendMessageBatch calls, within SQS's limits; pure.

Messages are filled towards `message_bytes` from an estimate of how well the last ones deflated,
then checked: a message over the limit is split in two, and a batch that alone is larger than a
message is split into parts (by frames, and by series when one frame is too large), each describing
only its own series; the handler tells parts apart by their first sample (first frame's time and
its first series).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sysmon.pb.v1 import events_pb2
from sysmon.pipeline import wire

_B64 = 4 / 3
# Room for one sample and the longest description the limits allow (16 attributes of 64 + 256 characters).
MIN_MESSAGE_BYTES = 16 * 1024


@dataclass
class Packer:
    message_bytes: int = 64 * 1024
    level: int = 6
    # deflated / raw of recent messages; starts pessimistic (no gain), so the first message is never too big
    ratio: float = 1.0
    messages: int = field(default=0, init=False)
    splits: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if not MIN_MESSAGE_BYTES <= self.message_bytes <= wire.MAX_MESSAGE_BYTES:
            raise ValueError(f"message_bytes must be between {MIN_MESSAGE_BYTES} and {wire.MAX_MESSAGE_BYTES}")

    def _estimate(self, raw: int) -> float:
        return raw * self.ratio * _B64 + 160  # attributes and base64 padding

    def pack(self, events: Sequence[events_pb2.SamplesEvent]) -> list[wire.Encoded]:
        out: list[wire.Encoded] = []
        cur: list[events_pb2.SamplesEvent] = []
        raw = 0
        for ev in events:
            n = ev.ByteSize() + 6  # the field tag and length in SamplesEvents
            if cur and self._estimate(raw + n) > self.message_bytes:
                out += self._encode(cur)
                cur, raw = [], 0
            cur.append(ev)
            raw += n
        if cur:
            out += self._encode(cur)
        self.messages += len(out)
        return out

    def _encode(self, events: list[events_pb2.SamplesEvent]) -> list[wire.Encoded]:
        enc = wire.encode(events, self.level)
        # Against the events' own sizes, as pack() estimates (encode describes each series once).
        full = sum(ev.ByteSize() + 6 for ev in events)
        if full:
            self.ratio = 0.7 * self.ratio + 0.3 * (len(enc.body) / _B64 / full)
        if enc.size <= self.message_bytes:
            return [enc]
        self.splits += 1
        if len(events) > 1:
            half = len(events) // 2
            return self._encode(events[:half]) + self._encode(events[half:])
        parts = split_frames(events[0])
        if len(parts) == 1:
            parts = split_series(events[0])
        if len(parts) == 1:  # one sample with its description; a message of 16 KiB always holds that
            raise ValueError(f"one sample of {events[0].host_id} seq {events[0].seq} is larger than a message "
                             f"({enc.size} > {self.message_bytes} bytes)")
        return [e for p in parts for e in self._encode([p])]


def split_frames(ev: events_pb2.SamplesEvent) -> list[events_pb2.SamplesEvent]:
    """The event as two parts of about half its frames each, each with its own series only."""
    if len(ev.frames) < 2:
        return [ev]
    half = len(ev.frames) // 2
    infos = {s.id: s for s in ev.series}
    out = []
    for frames in (ev.frames[:half], ev.frames[half:]):
        p = events_pb2.SamplesEvent(host_id=ev.host_id, session_id=ev.session_id, seq=ev.seq,
                                    stored_unix_ms=ev.stored_unix_ms)
        p.frames.extend(frames)
        ids = {i for f in frames for i in f.series_ids}
        p.series.extend(infos[i] for i in sorted(ids) if i in infos)
        out.append(p)
    return out


def split_series(ev: events_pb2.SamplesEvent) -> list[events_pb2.SamplesEvent]:
    """The event as two parts of about half its series each (for a frame larger than a message)."""
    ids = sorted({i for f in ev.frames for i in f.series_ids})
    if len(ids) < 2:
        return [ev]
    infos = {s.id: s for s in ev.series}
    out = []
    for chosen in (set(ids[:len(ids) // 2]), set(ids[len(ids) // 2:])):
        p = events_pb2.SamplesEvent(host_id=ev.host_id, session_id=ev.session_id, seq=ev.seq,
                                    stored_unix_ms=ev.stored_unix_ms)
        for f in ev.frames:
            keep = [(i, v) for i, v in zip(f.series_ids, f.values, strict=True) if i in chosen]
            if keep:
                p.frames.add(time_unix_ms=f.time_unix_ms, series_ids=[i for i, _ in keep], values=[v for _, v in keep])
        p.series.extend(infos[i] for i in sorted(chosen) if i in infos)
        out.append(p)
    return out


def calls(messages: Sequence[wire.Encoded]) -> list[list[wire.Encoded]]:
    """Messages grouped into SendMessageBatch calls: at most 10 to a call, and 256 KiB in all."""
    out: list[list[wire.Encoded]] = []
    size = 0
    for m in messages:
        if not out or len(out[-1]) == wire.MAX_BATCH_MESSAGES or size + m.size > wire.MAX_CALL_BYTES:
            out.append([])
            size = 0
        out[-1].append(m)
        size += m.size
    return out
