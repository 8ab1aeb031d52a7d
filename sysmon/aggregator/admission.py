"""Samples that arrive in a request (Prometheus remote write, OTLP), through the native batches'
checks and storage path, answered once they are committed.

The protocol modules (remote_write.py, otlp.py) turn a request into Samples: per host, the
series and their values by time, every value and name already checked against the Limits. Here
they meet what a Push stream meets: the credential's hosts, the per-host active-series limit and
sample budget (shared with Push, so a host cannot double its limits by speaking two protocols),
then NormalizedBatches for the ingest's writers, the hot tier and the bus. The request waits for
its batches' acknowledgements, so a 2xx means committed.

A request is not a stream: its batches take a session of their own per aggregator process
("ingest-<id>"), numbered from 1, which keeps (host, session, seq) unique. A request sent again
after a failure gets new sequence numbers; its samples are then stored once anyway, because a
series holds one sample per time (the writer merges frames, the first value wins).
"""

from __future__ import annotations

import asyncio
import itertools
import re
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

from sysmon.aggregator import telemetry
from sysmon.aggregator.host_limits import HostBudget, HostSeries
from sysmon.aggregator.ingest import Ingest
from sysmon.aggregator.receipts import NotStored, Receipts
from sysmon.core.batch import NormalizedBatch
from sysmon.core.identity import Principal
from sysmon.core.metrics import HOST_ID_RE, Limits, Series, format_series, series_id

# A series of a request is active for its host this long after its last sample (as Mimir counts
# active series), and counts against max_series_per_host meanwhile.
ACTIVE_FOR_S = 600.0
# How long a request waits for its commit before it is answered 503 (the sender retries).
COMMIT_TIMEOUT_S = 60.0
MAX_ERRORS_TOLD = 5
# Requests arriving this close together are committed as one (see Admission._join).
LINGER_S = 0.01
_SERIES_CACHE_MAX = 1_000_000
_NOT_HOST_CHARS = re.compile(r"[^A-Za-z0-9._-]")


def clean_host(value: str, default: str) -> str:
    """A host id from what a sender calls its host (an instance, host.name): characters a host id
    may not hold become '-'; `default` when nothing is left."""
    host = _NOT_HOST_CHARS.sub("-", value).lstrip("-._")[:253]
    return host if host and HOST_ID_RE.match(host) else default


class BadRequest(ValueError):
    """The request cannot be read: answered 400, or 415 for an encoding not spoken (a sender
    retries neither)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class Refused(Exception):
    """The whole request is answered with `status` (and Retry-After when `retry_after_s`)."""

    def __init__(self, status: int, message: str, retry_after_s: float = 0.0):
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after_s = retry_after_s


@dataclass
class HostSamples:
    series: dict[int, Series] = field(default_factory=dict)
    # time ms -> (series ids, values), one value per series and time
    frames: dict[int, tuple[list[int], list[float]]] = field(default_factory=dict)
    # ids per time, for spotting a second value of a series at one time
    _seen: set[tuple[int, int]] = field(default_factory=set)

    def add(self, s: Series, t: int, v: float) -> bool:
        """False (nothing added) when the series already has a value at `t` in this request."""
        if (s.id, t) in self._seen:
            return False
        self._seen.add((s.id, t))
        self.series[s.id] = s
        frame = self.frames.get(t)
        if frame is None:
            frame = self.frames[t] = ([], [])
        frame[0].append(s.id)
        frame[1].append(v)
        return True

    def merge(self, other: HostSamples) -> None:
        """Add another request's samples; a value for a series and time already here is dropped
        (storage keeps the first it gets, and a sender sends one value per series and time)."""
        for t, (ids, values) in other.frames.items():
            for sid, v in zip(ids, values, strict=True):
                self.add(other.series[sid], t, v)

    def has(self, sid: int, t: int) -> bool:
        return (sid, t) in self._seen

    def drop(self, sid: int) -> int:
        """Take the series' values out; how many there were."""
        dropped = 0
        for t, (ids, values) in list(self.frames.items()):
            if sid in ids:
                i = ids.index(sid)
                del ids[i], values[i]
                dropped += 1
                if not ids:
                    del self.frames[t]
        self._seen = {(i, t) for i, t in self._seen if i != sid}
        return dropped

    @property
    def sample_count(self) -> int:
        return len(self._seen)


@dataclass
class Samples:
    """What one request carries, and what of it was refused at decoding (with why)."""

    hosts: dict[str, HostSamples] = field(default_factory=dict)
    refused: int = 0
    errors: list[str] = field(default_factory=list)
    # What decoding changed that must be undone when the request is not stored (OTLP's running
    # totals of delta sums): the sender sends it again.
    undo: list[Callable[[], None]] = field(default_factory=list)

    def host(self, host_id: str) -> HostSamples:
        h = self.hosts.get(host_id)
        if h is None:
            h = self.hosts[host_id] = HostSamples()
        return h

    def rollback(self) -> None:
        for undo in reversed(self.undo):
            undo()
        self.undo.clear()

    def refuse(self, message: str, n: int = 1) -> None:
        self.refused += n
        if len(self.errors) < MAX_ERRORS_TOLD:
            self.errors.append(message)

    @property
    def sample_count(self) -> int:
        return sum(h.sample_count for h in self.hosts.values())

    def summary(self) -> str:
        """What a 400 says: how many were refused, and the first reasons."""
        more = f" (and {self.refused - len(self.errors)} more)" if self.refused > len(self.errors) else ""
        return f"{self.refused} sample(s) refused: " + "; ".join(self.errors) + more


@dataclass
class _Round:
    """The samples of the requests gathered in one linger, by host, and their common outcome."""

    hosts: dict[str, HostSamples]
    done: asyncio.Future[None]


class SeriesCache:
    """Series by (host, name, attributes): a sender repeats the same series request after request,
    and its id (a hash) and interned strings are computed once."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, str, tuple[tuple[str, str], ...]], Series] = {}
        # A protocol's own look-up from what it receives to what it makes of it (remote write: a
        # series' label pairs -> its host and Series, or why it is refused), checked once.
        self.resolved: dict[Any, Any] = {}

    def remember(self, key: Any, value: Any) -> Any:
        if len(self.resolved) >= _SERIES_CACHE_MAX:
            self.resolved.clear()
        self.resolved[key] = value
        return value

    def get(self, host: str, name: str, attrs: Mapping[str, str], unit: str, kind: int) -> Series:
        key = (host, name, tuple(sorted(attrs.items())))
        s = self._by_key.get(key)
        if s is None or s.kind != kind or s.unit != unit:
            if len(self._by_key) >= _SERIES_CACHE_MAX:
                self._by_key.clear()
            s = self._by_key[key] = Series(series_id(host, name, attrs), sys.intern(host), sys.intern(name),
                                           dict(attrs), sys.intern(unit), kind)
        return s


class Admission:
    def __init__(self, ingest: Ingest, receipts: Receipts, limits: Limits, host_series: HostSeries,
                 budget: HostBudget, *, linger_s: float = LINGER_S):
        self.ingest = ingest
        self.receipts = receipts
        self.limits = limits
        self.host_series = host_series
        self.budget = budget
        self.series = SeriesCache()
        self.session_id = f"ingest-{uuid.uuid4().hex[:16]}"
        self._seq = itertools.count(1)
        self._active: dict[str, dict[int, float]] = {}  # host -> series id -> last seen (monotonic)
        self._pruned = time.monotonic()
        self.linger_s = linger_s
        self._round: _Round | None = None
        self._committing: set[asyncio.Task[None]] = set()

    async def admit(self, samples: Samples, principal: Principal, protocol: str) -> None:
        """Store what `samples` carries; returns once committed, with `samples.refused` saying
        what was not taken (the protocols answer that differently). Raises Refused when the
        request cannot be taken (403, 429, 503) or storage refused it (400)."""
        now = time.monotonic()
        self._prune(now)
        for host in samples.hosts:
            if not principal.may_speak_for(host):
                samples.rollback()
                raise Refused(403, f"this credential may not send for host {host!r}")
        self._hold_series(samples, now)
        # Every host's budget before anything is stored: a request is taken whole or sent back whole
        # (the hosts it did fit for have paid for it; the retry pays again, erring on the strict side).
        for host, hs in samples.hosts.items():
            wait = self.budget.take(host, hs.sample_count, now)
            if wait:
                telemetry.OVER_BUDGET.inc()
                samples.rollback()
                raise Refused(429, f"host {host} is over its budget of {self.limits.max_samples_per_second_per_host} "
                                   "samples/s", retry_after_s=wait)
        storage = self.ingest.storage
        if samples.hosts and not storage.ready.is_set():
            # Sent back before the live path sees it: the sender's retry comes with new sequence
            # numbers, and would reach the hot tier and the bus a second time.
            samples.rollback()
            raise Refused(503, "PostgreSQL is unavailable; send again", retry_after_s=max(1.0, storage.retry_after()))
        if samples.hosts:
            try:
                await self._join(samples)
            except Refused:
                samples.rollback()
                raise
        telemetry.FOREIGN_SAMPLES.labels(protocol, "stored").inc(samples.sample_count)
        if samples.refused:
            telemetry.FOREIGN_SAMPLES.labels(protocol, "refused").inc(samples.refused)

    def _hold_series(self, samples: Samples, now: float) -> None:
        """Count each new series against its host's limit; a series over it is refused with its samples."""
        for host, hs in list(samples.hosts.items()):
            active = self._active.setdefault(host, {})
            over = [sid for sid in hs.series if sid not in active and not self.host_series.acquire(host, sid)]
            for sid in hs.series:
                if sid not in over:
                    active[sid] = now
            for sid in over:
                s = hs.series.pop(sid)
                samples.refuse(f"{format_series(s.name, s.attributes)}: host {host} already has "
                               f"{self.host_series.count(host)} active series, the limit per host "
                               f"({self.limits.max_series_per_host})", hs.drop(sid))
            if not hs.frames:
                del samples.hosts[host]
            if not active:
                del self._active[host]

    def _prune(self, now: float) -> None:
        if now - self._pruned < 60.0:
            return
        self._pruned = now
        for host in list(self._active):
            active = self._active[host]
            idle = [sid for sid, seen in active.items() if now - seen > ACTIVE_FOR_S]
            for sid in idle:
                del active[sid]
            if idle:
                self.host_series.release(host, idle)
            if not active:
                del self._active[host]
        self.budget.forget_idle(now)

    def _batches(self, host: str, hs: HostSamples) -> list[NormalizedBatch]:
        """The host's frames in time order, as batches within the per-batch limits."""
        out: list[NormalizedBatch] = []
        times: list[int] = []
        ids: list[list[int]] = []
        values: list[list[float]] = []
        n = 0
        lim = self.limits
        for t in sorted(hs.frames):
            fids, fvals = hs.frames[t]
            if times and (len(times) >= lim.max_frames_per_batch or n + len(fids) > lim.max_samples_per_batch):
                out.append(self._batch(host, hs, times, ids, values))
                times, ids, values, n = [], [], [], 0
            times.append(t)
            ids.append(fids)
            values.append(fvals)
            n += len(fids)
        if times:
            out.append(self._batch(host, hs, times, ids, values))
        return out

    def _batch(self, host: str, hs: HostSamples, times: list[int], ids: list[list[int]],
               values: list[list[float]]) -> NormalizedBatch:
        used = {i for f in ids for i in f}
        series = list(hs.series.values()) if len(used) == len(hs.series) else [hs.series[i] for i in used]
        return NormalizedBatch(host, self.session_id, next(self._seq), series, times, ids, values)

    async def _join(self, samples: Samples) -> None:
        """Commit the request's samples with those of the requests that arrive within the linger.

        A host holds one frame per time in storage. A Prometheus shards its series over parallel
        requests, so each scrape of a host arrives in several requests at once; committed apart,
        every request after the first would find the host's frame for that time already there and
        take the writer's slower merging statement. Gathered, they make one frame."""
        r = self._round
        if r is None:
            loop = asyncio.get_running_loop()
            r = self._round = _Round({}, loop.create_future())
            # Waiters may all have gone (their senders hung up): the outcome is still looked at.
            r.done.add_done_callback(lambda f: f.cancelled() or f.exception())
            loop.call_later(self.linger_s, self._close_round, r)
        for host, hs in samples.hosts.items():
            into = r.hosts.get(host)
            if into is None:
                r.hosts[host] = hs
            else:
                into.merge(hs)
        try:
            async with asyncio.timeout(COMMIT_TIMEOUT_S):
                await asyncio.shield(r.done)
        except TimeoutError:
            raise Refused(503, f"storage did not commit within {COMMIT_TIMEOUT_S:.0f}s; send again",
                          retry_after_s=5.0) from None
        except Refused as e:
            raise Refused(e.status, e.message, e.retry_after_s) from None

    def _close_round(self, r: _Round) -> None:
        if self._round is r:
            self._round = None
        task = asyncio.get_running_loop().create_task(self._commit_round(r))
        self._committing.add(task)
        task.add_done_callback(self._committing.discard)

    async def _commit_round(self, r: _Round) -> None:
        try:
            await self._store([b for host, hs in r.hosts.items() for b in self._batches(host, hs)])
        except Refused as e:
            r.done.set_exception(e)
        except BaseException as e:  # cancelled at shutdown: the senders send again
            r.done.set_exception(Refused(503, f"not stored ({e.__class__.__name__}); send again", 5.0))
            raise
        else:
            r.done.set_result(None)

    async def _store(self, batches: list[NormalizedBatch]) -> None:
        waits = [self.receipts.expect(b.key) for b in batches]
        try:
            for b in batches:
                await self.ingest.submit(b)
            async with asyncio.timeout(COMMIT_TIMEOUT_S):
                results = await asyncio.gather(*waits, return_exceptions=True)
        except TimeoutError:
            raise Refused(503, f"storage did not commit within {COMMIT_TIMEOUT_S:.0f}s; send again",
                          retry_after_s=5.0) from None
        finally:
            for b in batches:
                self.receipts.forget(b.key)
        errors = [r for r in results if isinstance(r, BaseException)]
        if not errors:
            return
        retry = [e for e in errors if isinstance(e, NotStored) and e.retry_after_ms]
        if retry:
            e = retry[0]
            status = 429 if e.code == grpc.StatusCode.RESOURCE_EXHAUSTED else 503
            raise Refused(status, f"not stored, send again: {e.message}", retry_after_s=e.retry_after_ms / 1000)
        raise Refused(400, f"not stored: {errors[0]}")
