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


class UnackedBuffer:
    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._items: OrderedDict[int, Pending] = OrderedDict()
        self.dropped = 0  # overflow: oldest batches given up
        self.acked = 0
        self.rejected = 0

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

    def unsend_all(self) -> None:
        """The stream ended: whatever was in flight is sent again on the next one."""
        for p in self._items.values():
            p.sent_at = None

    def due(self, now: float, ack_timeout: float, limit: int = 100) -> list[Pending]:
        """What to send now, oldest first: never sent on this stream, or unacknowledged for too long.

        A batch that must wait (nack) holds back every later one too, so batches always reach
        the aggregator in sequence order.
        """
        out: list[Pending] = []
        for p in self._items.values():
            if p.not_before > now:
                break
            if p.sent_at is None or now - p.sent_at >= ack_timeout:
                out.append(p)
                if len(out) >= limit:
                    break
        return out

    def next_deadline(self, ack_timeout: float) -> float | None:
        """The earliest monotonic time at which due() can return something new."""
        times = [p.not_before if p.sent_at is None else p.sent_at + ack_timeout for p in self._items.values()]
        return min(times) if times else None

    @property
    def last_seq(self) -> int:
        return next(reversed(self._items)) if self._items else 0
