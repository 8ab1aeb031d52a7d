"""Retry delays in the shape of OpenTelemetry's OTLP exporter: 2**n * uniform(0.8, 1.2), capped.

Waits go through an asyncio.Event so that shutdown interrupts them at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field

import grpc

# The codes after which trying again can succeed; everything else is the caller's mistake.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)


@dataclass
class Backoff:
    initial: float = 1.0
    maximum: float = 30.0
    jitter: tuple[float, float] = (0.8, 1.2)
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self, hint: float | None = None) -> float:
        """The next wait in seconds; a server's retry hint is honoured when it is longer."""
        base = min(self.maximum, self.initial * (2 ** min(self.attempt, 64)))
        self.attempt += 1
        delay = min(self.maximum, base * self.rng.uniform(*self.jitter))
        return max(delay, hint) if hint is not None else delay

    def reset(self) -> None:
        self.attempt = 0


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Wait `seconds` unless `stop` is set first; True when stopping."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    return stop.is_set()


async def wait_any(*events: asyncio.Event, seconds: float | None = None) -> None:
    """Until one of `events` is set, or `seconds` pass; the waiters are cleaned up either way."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
