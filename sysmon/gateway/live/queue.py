"""A client's outgoing frames: bounded, dropping the oldest when full, counting what it dropped."""

from __future__ import annotations

import asyncio
from collections import deque


class FrameQueue:
    """put() never blocks and never grows past `maxlen`, so the fan-out never waits for a client.

    A live view wants the newest data: when the client falls behind, the oldest frames go, and
    the client is told how many it missed (`take_unreported`) so that it can refetch.
    """

    def __init__(self, maxlen: int):
        self._items: deque[str] = deque(maxlen=maxlen)
        self._wake = asyncio.Event()
        self.maxlen = maxlen
        self.dropped = 0
        self._unreported = 0
        self.closed: tuple[int, str] | None = None

    def __len__(self) -> int:
        return len(self._items)

    def put(self, frame: str) -> bool:
        """Queue a frame; False when that pushed out the oldest one."""
        full = len(self._items) == self.maxlen
        if full:
            self.dropped += 1
            self._unreported += 1
        self._items.append(frame)
        self._wake.set()
        return not full

    def close(self, code: int, reason: str) -> None:
        if self.closed is None:
            self.closed = (code, reason)
        self._wake.set()

    def take_unreported(self) -> int:
        n, self._unreported = self._unreported, 0
        return n

    async def get(self) -> str | None:
        """The oldest frame, or None once closed (a close goes before frames still queued)."""
        while True:
            if self.closed is not None:
                return None
            if self._items:
                return self._items.popleft()
            self._wake.clear()
            await self._wake.wait()
