"""Shard leases on Redis: the Redis bus's equivalent of a Kafka consumer group's assignment.

With SYSMON_BUS_REDIS_SHARDS=P above 1, the samples topic is P streams, `bus:samples:<p>`, a
host's events always on the stream of `partition_for(host, P)` (the hash the Kafka path uses),
written by the aggregator as it writes Kafka partitions (one entry per shard a live group touches).
The members of a group (the alerts replicas) share the shards with leases:

    <prefix>:members     sorted set: member -> when its heartbeat runs out (Redis's clock)
    <prefix>:lease:<p>   "<member> <token>", SET NX PX ttl, renewed every ttl/3 (1 s at most)
    <prefix>:fence:<p>   the shard's last token (INCR on every acquisition)

Every round a member renews its heartbeat and leases, reads who holds what, and computes the
same balanced target as every other member (`balance`: each live member ≈P/N, shards staying
where they are as far as that allows). It acquires a free shard of its target, and gives away
(after its reader has revoked: the step in hand stored and acknowledged) one that the target gives
another. A clean stop releases its leases, so a hand-over takes one round, not a ttl.

A shard's stream is read through one consumer group with one fixed consumer name,
`LEASEHOLDER`, whoever holds the lease: what the last owner read and did not acknowledge stays
in that consumer's pending list, and the next owner reads it first (at least once; the alerts
service's state and outbox in PostgreSQL make a second evaluation harmless).

A member that cannot renew in time (paused past the ttl: SIGSTOP, a long GC, a partition) stops
acting on the shard *by its own clock* before anyone else may take it: a lease counts as held
only until `renewal sent + ttl * SAFETY`, measured on the monotonic clock from before the request
went out, so it ends locally before it ends in Redis. Past that, the member reads nothing more
from the shard, acknowledges nothing on it, and `holds()` says False, which the alerts service
checks before it stores anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import redis.asyncio as aioredis

log = logging.getLogger(__name__)

LEASEHOLDER = "leaseholder"
# The share of the ttl a lease counts as held locally: room for the two clocks' rates and a
# renewal's round trip (Redis starts the ttl when the request arrives, after we sent it).
SAFETY = 0.8
EVERY_S = 1.0

_HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 10)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""
# Free, or held by an earlier incarnation of this member (a restarted container keeps its name).
_ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur and string.sub(cur, 1, string.len(ARGV[1]) + 1) ~= ARGV[1] .. ' ' then return 0 end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. token, 'PX', ARGV[2])
return token
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def balance(members: Iterable[str], holders: Mapping[int, str], shards: int) -> dict[str, frozenset[int]]:
    """Who should hold which of `shards` shards: each member P//N or one more, every shard someone's.

    Sticky: a member keeps what it holds up to its quota (a hand-over costs a window refill), and
    the one-more quotas go to those that hold the most now. A shard held by a non-member (a lease
    not yet run out) is given to a member, which takes it once it is free. Every member computes
    this from the same view, so they agree without talking to each other.
    """
    ms = sorted(set(members))
    if not ms:
        return {}
    held: dict[str, list[int]] = {m: sorted(p for p, h in holders.items() if h == m and 0 <= p < shards) for m in ms}
    order = sorted(ms, key=lambda m: (-len(held[m]), m))
    base, extra = divmod(shards, len(ms))
    quota = {m: base + (1 if i < extra else 0) for i, m in enumerate(order)}
    out = {m: set(held[m][:quota[m]]) for m in ms}
    taken = set().union(*out.values())
    free = iter(p for p in range(shards) if p not in taken)
    for m in order:
        while len(out[m]) < quota[m]:
            out[m].add(next(free))
    return {m: frozenset(s) for m, s in out.items()}


def holder_of(value: bytes | str | None) -> str | None:
    """The member named in a lease's value ("<member> <token>")."""
    if value is None:
        return None
    v = value.decode() if isinstance(value, bytes) else value
    return v.rpartition(" ")[0] or None


@dataclass
class Lease:
    value: str  # "<member> <token>": what renewal and release compare against
    token: int
    valid_until: float  # time.monotonic()


class Leases:
    """One member's leases on the shards of one group; `run()` keeps them (a task of the reader)."""

    def __init__(self, redis: aioredis.Redis, prefix: str, member: str, shards: int, *, ttl_ms: int):
        self.redis = redis
        self.prefix = prefix
        self.member = member
        self.shards = shards
        self.ttl_ms = ttl_ms
        self.held: dict[int, Lease] = {}
        self.target: frozenset[int] = frozenset()
        self.changed = asyncio.Event()  # held or target moved: the reader revokes and assigns
        self.lost = 0  # leases that ran out or were taken before this member gave them up
        self._stopped = False
        self._heartbeat = redis.register_script(_HEARTBEAT)
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    def lease_key(self, p: int) -> str:
        return f"{self.prefix}:lease:{p}"

    @property
    def every_s(self) -> float:
        # A third of the ttl bounds a pause's damage; a second at most bounds how long a joining
        # member waits for its share (a round is three small commands).
        return min(self.ttl_ms / 3000, EVERY_S)

    def valid(self, now: float | None = None) -> frozenset[int]:
        """The shards this member may act on now, by its own clock."""
        t = time.monotonic() if now is None else now
        return frozenset(p for p, lease in self.held.items() if lease.valid_until > t)

    def holds(self, p: int) -> bool:
        lease = self.held.get(p)
        return lease is not None and lease.valid_until > time.monotonic()

    async def run(self) -> None:
        """After the first tick: renew, rebalance and acquire every round, until cancelled. Redis away: the leases run
        out locally on time (valid() shrinks), and the round is tried again."""
        while not self._stopped:
            await asyncio.sleep(self.every_s)
            if self._stopped:
                return
            try:
                await self.tick()
            except (OSError, TimeoutError, aioredis.RedisError) as e:
                log.warning("bus leases %s: renewal failed (%s)", self.prefix, e)
                self._expire_locally()
            except Exception:
                # A keeper that died would leave its member reading nothing, silently, for good.
                log.exception("bus leases %s: a round failed; the next one tries again", self.prefix)
                self._expire_locally()

    def stop(self) -> None:
        """Before cancelling run(): on Python 3.11 redis-py can swallow a cancellation that lands as
        a command completes (see redis._honour_cancellation), and the loop must end all the same."""
        self._stopped = True

    def _expire_locally(self) -> None:
        now = time.monotonic()
        for p in [p for p, lease in self.held.items() if lease.valid_until <= now]:
            del self.held[p]
            self.lost += 1
            log.warning("bus leases %s: member %s lost shard %d (not renewed in time)", self.prefix, self.member, p)
            self.changed.set()

    async def tick(self) -> None:
        t0 = time.monotonic()
        until = t0 + self.ttl_ms / 1000 * SAFETY
        self._expire_locally()  # a pause past the ttl: what ran out is gone before we ask Redis
        members = [m.decode() for m in await self._heartbeat([f"{self.prefix}:members"], [self.member, self.ttl_ms])]
        held = list(self.held.items())
        if held:
            pipe = self.redis.pipeline(transaction=False)
            for p, lease in held:
                await self._renew([self.lease_key(p)], [lease.value, self.ttl_ms], client=pipe)
            for (p, lease), ok in zip(held, await pipe.execute(), strict=True):
                if self.held.get(p) is not lease:
                    continue  # released by the reader while this round was out
                if ok:
                    lease.valid_until = until
                else:
                    del self.held[p]
                    self.lost += 1
                    log.warning("bus leases %s: member %s lost shard %d (taken over)", self.prefix, self.member, p)
                    self.changed.set()
        values = await self.redis.mget([self.lease_key(p) for p in range(self.shards)])
        holders = {p: h for p, v in enumerate(values) if (h := holder_of(v)) is not None}
        target = balance(members, holders, self.shards).get(self.member, frozenset())
        if target != self.target:
            self.target = target
            self.changed.set()
        for p in sorted(target - self.held.keys()):
            if holders.get(p) not in (None, self.member):
                continue  # its holder gives it up when it sees the same target, or its lease runs out
            token = await self._acquire([self.lease_key(p), f"{self.prefix}:fence:{p}"], [self.member, self.ttl_ms])
            if token:
                self.held[p] = Lease(f"{self.member} {token}", int(token), until)
                self.changed.set()

    async def release(self, shards: Iterable[int]) -> None:
        """Give shards up at once (after their work is stored), so their next owner need not wait."""
        for p in sorted(shards):
            lease = self.held.pop(p, None)
            if lease is not None:
                with contextlib.suppress(OSError, TimeoutError, aioredis.RedisError):
                    await self._release([self.lease_key(p)], [lease.value])

    async def leave(self) -> None:
        await self.release(list(self.held))
        with contextlib.suppress(OSError, TimeoutError, aioredis.RedisError):
            await self.redis.zrem(f"{self.prefix}:members", self.member)
