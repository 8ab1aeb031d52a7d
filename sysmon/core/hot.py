"""The hot tier in Redis: each host's latest values and its last few minutes of frames.

Keys (per host, so a host's data lives and expires together):
  hot:frames:{host}  sorted set, score = frame time (ms), member = packed frame
                     (int64 time, then int64 series ids, then float64 values, little-endian)
  hot:latest:{host}  hash "f:" + digest of a frame layout (its series ids) -> that layout's newest
                     packed frame as of the host's last refresh (every LATEST_EVERY_MS); the frames
                     hold anything newer, and readers overlay them (it outlives the frames, for
                     hosts gone quiet). Fields named by a series id ("time value") are the form
                     before layouts, still read.
  hot:series:{host}  hash series_id -> JSON {name, attributes, unit, kind}
  hot:hosts          sorted set host -> newest sample time (ms); the fleet's last-seen index
  hot:epoch          a random token set by the first writer after Redis starts empty; a writer that
                     finds it missing or changed knows Redis lost its data (a restart without
                     persistence, a flush) and describes its series again at once
"""

from __future__ import annotations

import hashlib
import json
import struct
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis.asyncio as aioredis
import redis.exceptions

from sysmon.core.batch import NormalizedBatch
from sysmon.core.metrics import Series

HOSTS_KEY = "hot:hosts"
EPOCH_KEY = "hot:epoch"
# Latest values outlive the window so that a host that went quiet still shows what it last said.
LATEST_TTL_S = 7 * 86400
DESCRIBE_EVERY_MS = 600_000
# What is not needed on every batch: trimming and expiring a host's frames, and its latest-values
# hash (readers take anything newer from the frames). Every batch only adds its frames and moves
# the host's last-seen time: two commands instead of seven, which is most of the hot tier's cost.
LATEST_EVERY_MS = 30_000


# Adds each batch's frames to its host's sorted set and moves the host's last-seen time forward.
# KEYS: the last-seen index, then each batch's frames key. ARGV, per batch in KEYS order: host,
# newest time, frame count, then (time, packed frame) per frame.
_WRITE_LUA = """
local a = 1
for k = 2, #KEYS do
    local host, newest, n = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
    a = a + 3
    for first = 0, n - 1, 200 do  -- in chunks: unpack() is bounded by Lua's stack
        local members = {}
        for i = first, math.min(first + 199, n - 1) do
            members[#members + 1] = ARGV[a + 2 * i]
            members[#members + 1] = ARGV[a + 2 * i + 1]
        end
        redis.call('ZADD', KEYS[k], unpack(members))
    end
    a = a + 2 * n
    redis.call('ZADD', KEYS[1], 'GT', newest, host)
end
return #KEYS - 1
"""
_WRITE_SHA = hashlib.sha1(_WRITE_LUA.encode()).hexdigest()


def frames_key(host: str) -> str:
    return f"hot:frames:{host}"


LAYOUT_PREFIX = b"f:"


def layout_field(packed: bytes) -> bytes:
    """The latest hash's field for a packed frame: its layout (the series ids it carries)."""
    return LAYOUT_PREFIX + hashlib.blake2b(packed[8:8 + (len(packed) - 8) // 2], digest_size=8).digest()


def latest_key(host: str) -> str:
    return f"hot:latest:{host}"


def series_key(host: str) -> str:
    return f"hot:series:{host}"


_FRAME_STRUCTS: dict[int, struct.Struct] = {}


def pack_frame(time_ms: int, ids: Sequence[int], values: Sequence[float]) -> bytes:
    n = len(ids)
    st = _FRAME_STRUCTS.get(n)
    if st is None:
        st = struct.Struct(f"<q{n}q{n}d")
        if len(_FRAME_STRUCTS) < 256:  # frames of a few sizes recur; keep those
            _FRAME_STRUCTS[n] = st
    return st.pack(time_ms, *ids, *values)


def unpack_frame(data: bytes) -> tuple[int, np.ndarray, np.ndarray]:
    (t,) = struct.unpack_from("<q", data)
    n = (len(data) - 8) // 16
    ids = np.frombuffer(data, dtype="<i8", count=n, offset=8)
    values = np.frombuffer(data, dtype="<f8", count=n, offset=8 + 8 * n)
    return t, ids, values


def series_json(s: Series) -> str:
    return json.dumps({"name": s.name, "attributes": dict(s.attributes), "unit": s.unit, "kind": s.kind},
                      sort_keys=True)


@dataclass(frozen=True)
class HotFrame:
    time_ms: int
    ids: np.ndarray
    values: np.ndarray


class HotTier:
    def __init__(self, redis: aioredis.Redis, window_ms: int = 300_000):
        self.redis = redis
        self.window_ms = window_ms
        # Per process: series already described and each host's newest time, so that a replayed
        # old batch never overwrites a newer latest value. Rebuilt cheaply after a restart.
        self._described: set[int] = set()
        self._described_lists: dict[str, list[Series]] = {}  # host -> a series list described whole
        self._described_at = 0
        self._newest: dict[str, int] = {}
        self._refreshed: dict[str, int] = {}  # host -> when its trim and latest hash were last written
        self._epoch: bytes | None = None

    async def write(self, batches: Iterable[NormalizedBatch], now_ms: int) -> None:
        batches = list(batches)
        try:
            await self._write(batches, now_ms)
        except redis.exceptions.NoScriptError:
            # Redis restarted (or flushed its scripts): load ours and write again; the writes are
            # idempotent (the same members, the same newest times).
            await self.redis.script_load(_WRITE_LUA)
            self._refreshed.clear()
            await self._write(batches, now_ms)

    async def _write(self, batches: list[NormalizedBatch], now_ms: int) -> None:
        pipe = self.redis.pipeline(transaction=False)
        # First in the pipeline: was Redis emptied since we last wrote? Then what this pipeline
        # writes lacks descriptions this process believes are there.
        pipe.get(EPOCH_KEY)
        described: list[int] = []
        if now_ms - self._described_at > DESCRIBE_EVERY_MS:
            # Describe every series again now and then, in case a description was lost otherwise.
            self._described.clear()
            self._described_lists.clear()
            self._described_at = now_ms
        keys: list[str] = [HOSTS_KEY]
        args: list[Any] = []
        lists: list[tuple[str, list[Series]]] = []
        for b in batches:
            if not b.times_ms:
                continue
            fk = frames_key(b.host_id)
            members = [(t, pack_frame(t, ids, vals))
                       for t, ids, vals in zip(b.times_ms, b.frame_ids, b.frame_values, strict=True)
                       if t > now_ms - self.window_ms]
            keys.append(fk)
            args += (b.host_id, b.max_ts, len(members))
            for t, m in members:
                args += (t, m)
            if now_ms - self._refreshed.get(b.host_id, -LATEST_EVERY_MS) >= LATEST_EVERY_MS:
                self._refreshed[b.host_id] = now_ms
                pipe.zremrangebyscore(fk, "-inf", f"({now_ms - self.window_ms}")
                pipe.pexpire(fk, self.window_ms * 2)
                self._latest(pipe, b)
            # The batches of a stream's usual layout share one list of series: checked whole once.
            if self._described_lists.get(b.host_id) is not b.series:
                todo = {s.id: series_json(s) for s in b.series if s.id not in self._described}
                if todo:
                    sk = series_key(b.host_id)
                    pipe.hset(sk, mapping=todo)
                    pipe.expire(sk, LATEST_TTL_S)
                    described.extend(todo)
                lists.append((b.host_id, b.series))
        if len(keys) > 1:
            # Every batch's frames and the fleet's last-seen index in one command: redis-py packs and
            # parses each command in Python, and two commands a batch were most of the hot tier's cost.
            pipe.evalsha(_WRITE_SHA, len(keys), *keys, *args)
        results = await pipe.execute()
        self._described.update(described)
        self._described_lists.update(lists)
        epoch = results[0]
        if epoch is None or epoch != self._epoch:
            await self._refill(batches, now_ms, epoch)

    def _latest(self, pipe: Any, b: NormalizedBatch) -> None:
        """The batch's newest frame of each layout into the host's latest hash, unless a newer one
        is there. A field per layout (its packed frame), not per series: a host's refresh is one
        small command instead of one with two arguments per series, which redis-py packs in Python."""
        newest = self._newest.get(b.host_id, 0)
        latest: dict[bytes, bytes] = {}
        for t, ids, vals in sorted(zip(b.times_ms, b.frame_ids, b.frame_values, strict=True)):
            if t >= newest and len(ids):
                packed = pack_frame(t, ids, vals)
                latest[layout_field(packed)] = packed
        if latest:
            lk = latest_key(b.host_id)
            pipe.hset(lk, mapping=latest)
            pipe.expire(lk, LATEST_TTL_S)
            self._newest[b.host_id] = max(newest, b.max_ts)

    async def _refill(self, batches: list[NormalizedBatch], now_ms: int, epoch: bytes | None) -> None:
        """Redis came back empty: describe these batches' series now, and every other host's with
        its next batch (within one collection interval), so the hot tier is whole again at once.
        Every aggregator sharing the Redis sees the new epoch and does the same for its hosts."""
        if epoch is None:
            await self.redis.set(EPOCH_KEY, uuid.uuid4().hex, nx=True)
            epoch = await self.redis.get(EPOCH_KEY)
        self._epoch = epoch
        self._described.clear()
        self._described_lists.clear()
        self._newest.clear()
        self._refreshed.clear()
        self._described_at = now_ms
        pipe = self.redis.pipeline(transaction=False)
        for b in batches:
            if b.series:
                sk = series_key(b.host_id)
                pipe.hset(sk, mapping={s.id: series_json(s) for s in b.series})
                pipe.expire(sk, LATEST_TTL_S)
                self._described.update(s.id for s in b.series)
        await pipe.execute()

    async def frames(self, host: str, start_ms: int, end_ms: int) -> list[HotFrame]:
        """Frames with start_ms <= time < end_ms, oldest first."""
        raw = await self.redis.zrangebyscore(frames_key(host), start_ms, f"({end_ms}")
        return [HotFrame(*unpack_frame(m)) for m in raw]

    async def series(self, host: str) -> dict[int, dict]:
        raw = await self.redis.hgetall(series_key(host))
        return {int(k): json.loads(v) for k, v in raw.items()}

    async def latest(self, host: str) -> dict[int, tuple[int, float]]:
        """Each series' newest (time_ms, value): the latest hash, overlaid by newer frames."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(latest_key(host))
        pipe.zrange(frames_key(host), 0, -1)
        raw, frames = await pipe.execute()
        frames = list(frames)
        out: dict[int, tuple[int, float]] = {}
        for k, v in raw.items():
            key = k if isinstance(k, bytes) else k.encode()
            if key.startswith(LAYOUT_PREFIX):
                frames.insert(0, v)
            else:  # written before layout fields: "time value" under the series id
                t, val = v.split(b" ") if isinstance(v, bytes) else v.split(" ")
                have = out.get(int(k))
                if have is None or int(t) >= have[0]:
                    out[int(k)] = (int(t), float(val))
        for m in frames:
            t, ids, values = unpack_frame(m)
            for sid, v in zip(ids.tolist(), values.tolist(), strict=True):
                have = out.get(sid)
                if have is None or t >= have[0]:
                    out[sid] = (t, v)
        return out

    async def hosts_last_seen(self, hosts: Sequence[str] | None = None) -> dict[str, int]:
        """host -> newest sample time (ms), for the whole fleet or only the hosts named."""
        if hosts is not None:
            # One host's view should not read the whole fleet's index.
            scores = await self.redis.zmscore(HOSTS_KEY, list(hosts)) if hosts else []
            return {h: int(score) for h, score in zip(hosts, scores, strict=True) if score is not None}
        raw = await self.redis.zrange(HOSTS_KEY, 0, -1, withscores=True)
        return {(h.decode() if isinstance(h, bytes) else h): int(score) for h, score in raw}
