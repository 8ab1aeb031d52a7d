"""From a validated batch to the hot tier, the bus and PostgreSQL, and the ack back.

Two paths per batch. The live path writes the hot tier and publishes on the bus at once, so
dashboards and alerts see a sample within milliseconds of its arrival. The durable path
queues the batch for the writers (one per PostgreSQL connection), which commit whatever has
queued up as one group and then acknowledge each batch to its collector. One writer gathers a
group at a time while the others commit theirs: a steady fleet gets one commit per linger,
however many writers there are, and a backlog is committed by all of them at once. Batches of one
session may commit in either order (storage keeps each seq once, whatever the order). The queue
is bounded in samples: when PostgreSQL falls behind, Push streams stop being read and
collectors buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import asyncpg
import grpc
import redis.exceptions

from sysmon.aggregator import telemetry
from sysmon.aggregator.storage import CONNECTION_ERRORS, Storage
from sysmon.core import bus as busmod
from sysmon.core.batch import NormalizedBatch, to_event
from sysmon.core.hot import HotTier
from sysmon.core.metrics import Series
from sysmon.pb.v1 import events_pb2

log = logging.getLogger(__name__)

BatchKey = tuple[str, str, int]
LIVE_QUEUE = 20_000
LIVE_GROUP = 500
ANNOUNCE_EVERY_S = 600.0
# Live groups waiting for a partitioned bus (Kafka), whose publisher runs apart from the hot tier's
# writes: a broker away holds up the bus, never the hot tier. Past this, groups skip the bus.
BUS_QUEUE_GROUPS = 256


class AckSink(Protocol):
    def ack(self, keys: Sequence[BatchKey]) -> None: ...

    def nack(self, keys: Sequence[BatchKey], retry_after_ms: int, reason: str,
             code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None: ...

    def reject(self, host_id: str, session_id: str, seq: int, code: grpc.StatusCode, message: str) -> None: ...


# PostgreSQL refusing a batch for its own content (SQLSTATE classes 22 and 23): sending it again
# cannot succeed, and it must not hold back the batches it was committed with.
DATA_ERRORS = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Ingest:
    def __init__(
        self,
        storage: Storage,
        hot: HotTier | None,
        bus: busmod.Bus | None,
        acks: AckSink,
        *,
        writers: int = 2,
        queue_samples: int = 1_000_000,
        commit_max_samples: int = 50_000,
        commit_linger_s: float = 0.0,
        live_linger_s: float = 0.0,
    ):
        self.storage = storage
        self.hot = hot
        self.bus = bus
        self.acks = acks
        self.queue_samples = queue_samples
        self.commit_max_samples = commit_max_samples
        self.commit_linger_s = commit_linger_s
        self.live_linger_s = live_linger_s
        self.writers = writers
        self._queue: asyncio.Queue[NormalizedBatch] = asyncio.Queue()
        self._gathering = asyncio.Lock()
        self._live: asyncio.Queue[NormalizedBatch] = asyncio.Queue(maxsize=LIVE_QUEUE)
        self._queued = 0
        self._space = asyncio.Condition()
        self._published: dict[tuple[str, str], int] = {}
        self._announced: set[int] = set()
        self._announced_lists: dict[str, list[Series]] = {}
        self._announced_at = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._last_live_error = 0.0
        self._bus_out: asyncio.Queue[tuple[list[NormalizedBatch], int]] = asyncio.Queue(maxsize=BUS_QUEUE_GROUPS)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run_writer(), name=f"writer-{i}") for i in range(self.writers)]
        self._tasks.append(asyncio.create_task(self._run_live(), name="live"))
        if self.bus is not None and self.bus.partitioned:
            self._tasks.append(asyncio.create_task(self._run_bus_out(), name="bus-out"))

    async def stop(self, drain_s: float = 10.0) -> None:
        """Commit what is queued (for at most `drain_s`), then stop."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_s):
                for q in (self._queue, self._live, self._bus_out):
                    await q.join()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def queued_samples(self) -> int:
        return self._queued

    async def submit(self, batch: NormalizedBatch) -> None:
        """Hand a batch over; returns once it is queued (waits while the queue is full)."""
        sess = (batch.host_id, batch.session_id)
        # A batch sent again after a nack was published the first time round.
        if batch.seq > self._published.get(sess, 0):
            self._published[sess] = batch.seq
            try:
                self._live.put_nowait(batch)
            except asyncio.QueueFull:
                telemetry.HOT_SKIPPED.inc()
        if not self.storage.ready.is_set():
            self._nack([batch.key], "PostgreSQL is unavailable")
            return
        n = batch.sample_count
        if self._queued and self._queued + n > self.queue_samples:
            async with self._space:
                await self._space.wait_for(lambda: self._queued == 0 or self._queued + n <= self.queue_samples)
        self._queued += n
        telemetry.QUEUED.set(self._queued)
        self._queue.put_nowait(batch)

    def forget_session(self, host_id: str, session_id: str) -> None:
        self._published.pop((host_id, session_id), None)

    def _nack(self, keys: Sequence[BatchKey], reason: str,
              code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        telemetry.NACKS.inc(len(keys))
        self.acks.nack(keys, int(self.storage.retry_after() * 1000), reason, code)

    async def _release(self, n: int) -> None:
        async with self._space:
            self._queued -= n
            self._space.notify_all()
        telemetry.QUEUED.set(self._queued)

    async def _run_writer(self) -> None:
        q = self._queue
        while True:
            # A thousand collectors rarely send at the same instant: without the linger each small
            # batch pays for a commit of its own (a round trip and a WAL flush).
            async with self._gathering:
                group, n = await gather(q, self.commit_linger_s, self.commit_max_samples)
            try:
                await self._commit(group)
            finally:
                await self._release(n)
                for _ in group:
                    q.task_done()

    async def _commit(self, group: list[NormalizedBatch]) -> None:
        error = await self._store(group)
        if error is None:
            return
        if len(group) == 1:
            self._reject_unstorable(group[0], error)
            return
        # One batch spoiled the group: commit each alone, so only the one at fault is refused.
        log.warning("a group commit of %d batches failed on its data (%s); committing them one by one",
                    len(group), error)
        for b in group:
            alone = await self._store([b])
            if alone is not None:
                self._reject_unstorable(b, alone)

    def _reject_unstorable(self, batch: NormalizedBatch, error: Exception) -> None:
        telemetry.POISON_BATCHES.inc()
        log.warning("batch %s/%s seq=%d refused by PostgreSQL: %s", batch.host_id, batch.session_id, batch.seq,
                    error)
        self.acks.reject(batch.host_id, batch.session_id, batch.seq, grpc.StatusCode.INVALID_ARGUMENT,
                         f"batch seq={batch.seq}: storage refused it: {error}")

    async def _store(self, group: list[NormalizedBatch]) -> Exception | None:
        """Commit the group and acknowledge it, or hand it back for a retry; a failure caused by
        the data itself is returned instead, for the caller to find the batch at fault."""
        keys = [b.key for b in group]
        if not self.storage.ready.is_set() or self.storage.writer is None:
            self._nack(keys, "PostgreSQL is unavailable")
            return None
        for attempt in range(2):
            t0 = time.perf_counter()
            try:
                result = await self.storage.writer.store(group)
            except asyncpg.CheckViolationError as e:
                # A sample with no partition to go to: make the partitions and try once more.
                if attempt == 0 and self.storage.pool is not None and self.storage.mode == "plain":
                    log.warning("creating missing partitions: %s", e)
                    async with self.storage.pool.acquire() as conn:
                        await self.storage.ensure_partitions(conn)
                    continue
                telemetry.COMMIT_FAILURES.inc()
                return e
            except DATA_ERRORS as e:
                telemetry.COMMIT_FAILURES.inc()
                return e
            except CONNECTION_ERRORS as e:
                telemetry.COMMIT_FAILURES.inc()
                self.storage.mark_down(e)
                self._nack(keys, "PostgreSQL is unavailable")
                return None
            except asyncpg.PostgresError as e:
                # Deadlocks, serialization failures, a server restarting: all worth one more try later.
                log.warning("commit failed, batches will be sent again: %s", e)
                telemetry.COMMIT_FAILURES.inc()
                self._nack(keys, f"commit failed: {e.__class__.__name__}", grpc.StatusCode.ABORTED)
                return None
            telemetry.COMMITS.observe(time.perf_counter() - t0)
            telemetry.SAMPLES_STORED.inc(result.samples)
            telemetry.DUPLICATES.inc(len(result.duplicates))
            if result.duplicate_samples:
                telemetry.DUPLICATE_SAMPLES.inc(result.duplicate_samples)
            self.acks.ack(result.stored + result.duplicates)
            return None
        return None

    def _events(self, batches: list[NormalizedBatch], stamp: int) -> bytes:
        """One SamplesEvents for the batches, describing each series only when it is new (or every
        10 minutes)."""
        out = events_pb2.SamplesEvents()
        for b in batches:
            self._add_event(b, stamp, out)
        return out.SerializeToString()

    async def _events_by_partition(self, batches: list[NormalizedBatch], stamp: int
                                   ) -> tuple[list[bytes], list[str | None]]:
        """For a partitioned bus (Kafka): one SamplesEvents per partition, holding the hosts whose
        id hashes to it, keyed by one of them so that it lands there. A host's events then stay on
        one partition, in order, and the members of a consumer group (the alerts replicas) each get
        whole hosts. A message per host cost the aggregator 1.7 times Redis's CPU (BENCHMARKS.md);
        a message per partition sends at most that many per live group."""
        assert self.bus is not None
        await self.bus.partition_count(busmod.SAMPLES)
        by_partition: dict[int, tuple[str, events_pb2.SamplesEvents]] = {}
        for b in batches:
            p = self.bus.partition_of(busmod.SAMPLES, b.host_id)
            entry = by_partition.get(p)
            if entry is None:
                entry = by_partition[p] = (b.host_id, events_pb2.SamplesEvents())
            self._add_event(b, stamp, entry[1])
        return [e.SerializeToString() for _, e in by_partition.values()], [k for k, _ in by_partition.values()]

    def _add_event(self, b: NormalizedBatch, stamp: int, out: events_pb2.SamplesEvents) -> None:
        if time.monotonic() - self._announced_at > ANNOUNCE_EVERY_S:
            self._announced.clear()
            self._announced_lists.clear()
            self._announced_at = time.monotonic()
        # The batches of a stream's usual layout share one list of series: seen whole once.
        if self._announced_lists.get(b.host_id) is b.series:
            new = []
        else:
            new = [s for s in b.series if s.id not in self._announced]
            self._announced.update(s.id for s in new)
            self._announced_lists[b.host_id] = b.series
        to_event(b, stamp, new, into=out.events.add())

    async def _run_live(self) -> None:
        while True:
            # What arrives within the linger goes to Redis with it: a pipeline and a publish per
            # batch were most of the aggregator's CPU at a thousand collectors (BENCHMARKS.md).
            batch, _ = await gather(self._live, self.live_linger_s, LIVE_GROUP, weight=lambda _: 1)
            stamp = now_ms()
            try:
                if self.bus is not None and self.bus.partitioned:
                    try:
                        self._bus_out.put_nowait((batch, stamp))
                    except asyncio.QueueFull:
                        telemetry.HOT_FAILURES.inc()  # the bus is this far behind: these skip it
                if self.hot is not None:
                    await self.hot.write(batch, stamp)
                if self.bus is not None and not self.bus.partitioned:
                    await self.bus.publish(busmod.SAMPLES, self._events(batch, stamp))
            except (redis.exceptions.RedisError, OSError) as e:
                self._live_failed(e)
            finally:
                for _ in batch:
                    self._live.task_done()

    def _live_failed(self, e: Exception) -> None:
        telemetry.HOT_FAILURES.inc()
        if time.monotonic() - self._last_live_error > 10:
            self._last_live_error = time.monotonic()
            log.warning("hot tier / bus unavailable, PostgreSQL still stores everything: %s", e)

    async def _run_bus_out(self) -> None:
        """The live groups onto a partitioned bus, in order, apart from the hot tier's writes."""
        assert self.bus is not None
        while True:
            batch, stamp = await self._bus_out.get()
            try:
                payloads, keys = await self._events_by_partition(batch, stamp)
                await self.bus.publish_many(busmod.SAMPLES, payloads, keys=keys)
            except (redis.exceptions.RedisError, OSError) as e:
                self._live_failed(e)
            finally:
                self._bus_out.task_done()


async def gather(q: asyncio.Queue[NormalizedBatch], linger_s: float, limit: int,
                 weight: Callable[[NormalizedBatch], int] = lambda b: b.sample_count,
                 ) -> tuple[list[NormalizedBatch], int]:
    """The next batch and those that join it: whatever is queued, and what arrives within the
    linger, up to `limit` (in samples, or by `weight`). One timer for the whole group (a timeout
    around each get cost a timer per batch)."""
    group = [await q.get()]
    n = weight(group[0])
    while n < limit and not q.empty():
        b = q.get_nowait()
        group.append(b)
        n += weight(b)
    if n >= limit or linger_s <= 0:
        return group, n
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(linger_s):
            while n < limit:
                b = await q.get()
                group.append(b)
                n += weight(b)
    return group, n
