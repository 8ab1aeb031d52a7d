"""Limits per host rather than per stream: a client cannot multiply them by opening more streams.

Pure and in memory, per aggregator (replicas each enforce them for the streams they hold; a
collector holds its streams on one aggregator).

- HostSeries counts each host's *active* series: those declared on any of its open Push streams
  (the way Mimir and Cortex limit active series). A stream's series are released when it ends.
- HostBudget is a token bucket per host over samples: `rate` per second sustained, `burst` at once
  (a collector replaying its buffer after an outage). A batch is admitted while the bucket is
  not empty, even when larger than what remains, so no batch is ever too large to pass.
"""

from __future__ import annotations

from collections import Counter, defaultdict


class HostSeries:
    def __init__(self, limit: int):
        self.limit = limit
        self._refs: dict[str, Counter[int]] = defaultdict(Counter)

    def count(self, host: str) -> int:
        return len(self._refs.get(host, ()))

    def acquire(self, host: str, series_id: int) -> bool:
        """Count one more stream using the series; False (nothing counted) when it would be one series too many."""
        refs = self._refs[host]
        if series_id not in refs and len(refs) >= self.limit:
            return False
        refs[series_id] += 1
        return True

    def release(self, host: str, series_ids: list[int]) -> None:
        refs = self._refs.get(host)
        if refs is None:
            return
        for sid in series_ids:
            refs[sid] -= 1
            if refs[sid] <= 0:
                del refs[sid]
        if not refs:
            del self._refs[host]


class HostBudget:
    def __init__(self, rate: float, burst: float):
        self.rate = rate
        self.burst = burst
        self._tokens: dict[str, tuple[float, float]] = {}  # host -> (tokens, at)

    def take(self, host: str, n: int, now: float) -> float:
        """Admit `n` samples (0.0), or say how many seconds until the host may send again."""
        tokens, at = self._tokens.get(host, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens <= 0:
            self._tokens[host] = (tokens, now)
            # Long enough for the bucket to have paid for this batch: retries spread out rather than
            # all arriving the moment the bucket turns positive.
            return (n - tokens) / self.rate
        self._tokens[host] = (tokens - n, now)
        return 0.0

    def forget_idle(self, now: float) -> None:
        """Drop hosts whose bucket has refilled: they cost nothing to recreate."""
        full = [h for h, (t, at) in self._tokens.items() if t + (now - at) * self.rate >= self.burst]
        for h in full:
            del self._tokens[h]
