"""Batches the aggregator has not acknowledged yet, kept for replay.

Bounded: past `capacity` the oldest batch is dropped and counted, so a collector cut off for a
long time keeps the most recent history and its memory stays flat. Batches keep their
original timestamps; they are sent in sequence order.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from sysmon.pb.v1 import metrics_pb2


@dataclass(slots=True)
class Pending:
    seq: int
    frame: metrics_pb2.Frame
    sent_at: float | None = None  # monotonic time of the last send on the current stream
    not_before: float = 0.0  # a nack asked to wait until then
    nacked: bool = False  # storage could not take it; it is sent again after not_before


class UnackedBuffer:
    """Unacknowledged batches in sequence order, and what to send next.

    New batches always go out at once, so the aggregator's hot tier and bus stay live even while
    PostgreSQL is down. A nacked batch waits for its not_before, and while nacks are the latest
    news (`probing`) only the oldest nacked batch is sent, as a probe: thousands of collectors
    then resend one batch each per retry rather than their whole buffers. The first ack ends
    probing and the rest follow. Storage deduplicates exactly, so order is not needed for
    correctness; the oldest-first order only makes replays read naturally.
    """

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._items: OrderedDict[int, Pending] = OrderedDict()
        self.dropped = 0  # overflow: oldest batches given up
        self.acked = 0
        self.rejected = 0
        self.probing = False

    def __len__(self) -> int:
        return len(self._items)

    def add(self, seq: int, frame: metrics_pb2.Frame) -> None:
        self._items[seq] = Pending(seq, frame)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
            self.dropped += 1

    def ack(self, seqs: Iterable[int]) -> int:
        n = 0
        for s in seqs:
            if self._items.pop(s, None) is not None:
                n += 1
        self.acked += n
        if n:
            self.probing = False
        return n

    def reject(self, seq: int) -> bool:
        if self._items.pop(seq, None) is None:
            return False
        self.rejected += 1
        return True

    def nack(self, seqs: Iterable[int], not_before: float) -> None:
        for s in seqs:
            p = self._items.get(s)
            if p is not None:
                p.sent_at = None
                p.not_before = not_before
                p.nacked = True
                self.probing = True

    def unsend_all(self) -> None:
        """The stream ended: whatever was in flight is sent again on the next one."""
        for p in self._items.values():
            p.sent_at = None

    def _ready_at(self, p: Pending, ack_timeout: float) -> float:
        if p.sent_at is not None:
            return p.sent_at + ack_timeout
        return p.not_before if p.nacked else 0.0

    def _probe_out(self, now: float, ack_timeout: float) -> bool:
        return any(p.nacked and p.sent_at is not None and now - p.sent_at < ack_timeout
                   for p in self._items.values())

    def due(self, now: float, ack_timeout: float, limit: int = 100) -> list[Pending]:
        """What to send now, oldest first: new batches, nacked ones whose wait is over (one at a
        time while probing), and batches unacknowledged for longer than the ack timeout."""
        out: list[Pending] = []
        hold_nacked = self.probing and self._probe_out(now, ack_timeout)
        for p in self._items.values():
            if self._ready_at(p, ack_timeout) > now:
                continue
            if p.nacked and p.sent_at is None:
                if hold_nacked:
                    continue
                hold_nacked = self.probing
            out.append(p)
            if len(out) >= limit:
                break
        return out

    def next_deadline(self, ack_timeout: float) -> float | None:
        """The earliest monotonic time at which due() can return something new."""
        # While a probe is out, the other nacked batches wait for its ack (which wakes the sender)
        # or its own timeout, which is among the times below.
        probe_out = self.probing and any(p.nacked and p.sent_at is not None for p in self._items.values())
        times = [
            self._ready_at(p, ack_timeout)
            for p in self._items.values()
            if not (probe_out and p.nacked and p.sent_at is None)
        ]
        return min(times) if times else None

    @property
    def last_seq(self) -> int:
        return next(reversed(self._items)) if self._items else 0
