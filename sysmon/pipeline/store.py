"""The pipeline's tables in PostgreSQL and the idempotent upsert of one message.

The handler owns its schema rather than joining sysmon's migrations: the Lambda writes to
whichever PostgreSQL it is given (often one of its own), needs none of the platform's tables, and
creates or upgrades its four tables at a cold start under an advisory lock, recording the version.

Idempotence: the batches (or parts of batches) already stored are keyed by
(host, session, seq, first sample), as sysmon's storage keys batches, and a message adds only
those it does not find, in the same transaction as the rollups, so a message delivered twice
changes nothing. Per-host rows are merged (least/greatest/+) from the same aggregate expressions as
the built-in 1-minute tier (sysmon.core.storage.rollups.TIER_1M): exact numeric sums of each
float8's shortest text. A fleet row is recomputed whole from the per-host rows, under a lock per
(metric, minute) held to commit, so that concurrent invocations never leave one stale. An
invocation's records are stored in one transaction (one commit, one statement per table): a
database failure sends them all back, and their redelivery stores what it did not.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import asyncpg

from sysmon.pipeline.samples import Catalog, Checked, flatten, part_key

SCHEMA_VERSION = 1
_LOCK_SCHEMA = 0x5359534D50  # "SYSMP"

SCHEMA = """
CREATE TABLE IF NOT EXISTS pipeline_meta (key text PRIMARY KEY, value text NOT NULL);
-- What each series is; metric_key names its (name, attributes) without the host.
CREATE TABLE IF NOT EXISTS pipeline_series (
    series_id  bigint PRIMARY KEY,
    host_id    text NOT NULL,
    name       text NOT NULL,
    attributes jsonb NOT NULL,
    unit       text NOT NULL,
    kind       smallint NOT NULL,
    metric_key bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS pipeline_series_metric ON pipeline_series (metric_key);
-- Batches (or parts of one, by their first sample) already stored: a message delivered again adds nothing.
CREATE TABLE IF NOT EXISTS pipeline_batches (
    host_id    text NOT NULL,
    session_id text NOT NULL,
    seq        bigint NOT NULL,
    first_ms   bigint NOT NULL,
    first_series bigint NOT NULL,
    stored_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (host_id, session_id, seq, first_ms, first_series)
);
CREATE INDEX IF NOT EXISTS pipeline_batches_stored_at ON pipeline_batches (stored_at);
-- Per host (per series) and minute: the columns and numbers of sysmon's rollup_1m.
CREATE TABLE IF NOT EXISTS pipeline_rollup_1m (
    series_id bigint NOT NULL,
    bucket    timestamptz NOT NULL,
    min       double precision NOT NULL,
    max       double precision NOT NULL,
    sum       numeric NOT NULL,
    count     bigint NOT NULL,
    PRIMARY KEY (series_id, bucket)
);
-- Per metric (name and attributes) and minute, across hosts: of each host's mean in the minute,
-- the median, 95th percentile and greatest; and the greatest sample of any host (peak).
CREATE TABLE IF NOT EXISTS pipeline_fleet_1m (
    metric_key bigint NOT NULL,
    bucket     timestamptz NOT NULL,
    name       text NOT NULL,
    attributes jsonb NOT NULL,
    hosts      integer NOT NULL,
    p50        double precision NOT NULL,
    p95        double precision NOT NULL,
    max        double precision NOT NULL,
    peak       double precision NOT NULL,
    PRIMARY KEY (metric_key, bucket)
);
CREATE INDEX IF NOT EXISTS pipeline_fleet_name ON pipeline_fleet_1m (name, bucket);
"""


async def ensure_schema(conn: asyncpg.Connection) -> None:
    """Create (or upgrade) the pipeline's tables once per database; cheap when they are there."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_SCHEMA)
        have = await conn.fetchval(
            "SELECT value FROM pipeline_meta WHERE key = 'schema_version'"
        ) if await conn.fetchval("SELECT to_regclass('pipeline_meta') IS NOT NULL") else None
        if have is not None and int(have) >= SCHEMA_VERSION:
            return
        await conn.execute(SCHEMA)
        await conn.execute(
            "INSERT INTO pipeline_meta VALUES ('schema_version', $1) ON CONFLICT (key) DO UPDATE SET value = $1",
            str(SCHEMA_VERSION),
        )


@dataclass(frozen=True)
class Stored:
    parts: int  # batches (or parts) stored by this call
    duplicates: int  # already stored before: skipped
    samples: int
    host_rows: int
    fleet_rows: int


def _lock_key(metric_key: int, bucket_ms: int) -> int:
    h = hashlib.blake2b(digest_size=8)
    h.update(metric_key.to_bytes(8, "big", signed=True))
    h.update(bucket_ms.to_bytes(8, "big", signed=True))
    return int.from_bytes(h.digest(), "big", signed=True)


def merge(messages: Sequence[Checked]) -> Checked:
    """The checked messages of one invocation as one (their series descriptions pooled)."""
    if len(messages) == 1:
        return messages[0]
    rows = {}
    for m in messages:
        rows.update(m.rows)
    return Checked([ev for m in messages for ev in m.events], rows)


async def store(conn: asyncpg.Connection, messages: Checked | Sequence[Checked],
                catalog: Catalog | None = None) -> Stored:
    """Store checked messages (sysmon.pipeline.samples.check) in one transaction: their batches not
    stored before, the per-host rows, and the fleet rows they touch, recomputed."""
    checked = merge([messages] if isinstance(messages, Checked) else messages)
    events = checked.events
    keys = list(dict.fromkeys(part_key(ev) for ev in events))
    rows: list = []
    async with conn.transaction():
        new = {
            (r["host_id"], r["session_id"], r["seq"], r["first_ms"], r["first_series"])
            for r in await conn.fetch(
                """
                INSERT INTO pipeline_batches (host_id, session_id, seq, first_ms, first_series)
                SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::int8[])
                ON CONFLICT DO NOTHING
                RETURNING host_id, session_id, seq, first_ms, first_series
                """,
                [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys], [k[3] for k in keys],
                [k[4] for k in keys],
            )
        }
        fresh, seen = [], set()
        for ev in events:
            k = part_key(ev)
            if k in new and k not in seen:  # the same part twice counts once
                seen.add(k)
                fresh.append(ev)
        samples = flatten(fresh, checked.rows)
        if not samples:
            return Stored(len(fresh), len(keys) - len(new), 0, 0, 0)
        stored = catalog.stored if catalog is not None else set()
        rows = sorted((r for r in samples.series.values() if r.series_id not in stored), key=lambda r: r.series_id)
        await conn.execute(
            """
            INSERT INTO pipeline_series (series_id, host_id, name, attributes, unit, kind, metric_key)
            SELECT i, h, n, a::jsonb, u, k, m
            FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int2[], $7::int8[])
                 AS t(i, h, n, a, u, k, m)
            ON CONFLICT (series_id) DO NOTHING
            """,
            [r.series_id for r in rows], [r.host_id for r in rows], [r.name for r in rows],
            [r.attributes for r in rows], [r.unit for r in rows], [r.kind for r in rows],
            [r.metric_key for r in rows],
        )
        # One statement, rows in one order (ORDER BY) in every transaction: concurrent invocations
        # never deadlock on the rows of one host's series.
        status = await conn.execute(
            """
            INSERT INTO pipeline_rollup_1m AS r (series_id, bucket, min, max, sum, count)
            SELECT i, date_bin('1 minute', ts, 'epoch'), min(v), max(v), sum(v::text::numeric), count(*)
            FROM (SELECT i, 'epoch'::timestamptz + t * interval '1 millisecond' AS ts, v
                  FROM unnest($1::int8[], $2::int8[], $3::float8[]) AS u(i, t, v)) s
            GROUP BY 1, 2
            ORDER BY 1, 2
            ON CONFLICT (series_id, bucket) DO UPDATE
            SET min = least(r.min, EXCLUDED.min), max = greatest(r.max, EXCLUDED.max),
                sum = r.sum + EXCLUDED.sum, count = r.count + EXCLUDED.count
            """,
            samples.series_ids, samples.times_ms, samples.values,
        )
        host_rows = int(status.split()[-1])
        fleet_rows = await refresh_fleet(conn, samples.fleet_buckets)
    if catalog is not None:  # committed: these series need no insert again
        catalog.stored.update(r.series_id for r in rows)
    return Stored(len(fresh), len(keys) - len(new), len(samples), host_rows, fleet_rows)


async def refresh_fleet(conn: asyncpg.Connection, buckets: Iterable[tuple[int, int]]) -> int:
    """Recompute the fleet rows of (metric_key, minute ms) from the per-host rows.

    Under a lock per row held to commit, taken after this transaction wrote its per-host rows: the
    transaction that takes a row's lock last sees its own rows and every other's (they committed
    before it got the lock, or they take the lock after it), so the row is whole whatever the order.
    """
    wanted = sorted(set(buckets))
    if not wanted:
        return 0
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(k) FROM unnest($1::int8[]) AS k ORDER BY k",
                           sorted({_lock_key(m, b) for m, b in wanted}))
        status = await conn.execute(
            """
            INSERT INTO pipeline_fleet_1m AS f (metric_key, bucket, name, attributes, hosts, p50, p95, max, peak)
            SELECT s.metric_key, r.bucket, min(s.name), min(s.attributes::text)::jsonb, count(*),
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY (r.sum / r.count)::float8),
                   percentile_cont(0.95) WITHIN GROUP (ORDER BY (r.sum / r.count)::float8),
                   max((r.sum / r.count)::float8), max(r.max)
            FROM unnest($1::int8[], $2::int8[]) AS w(m, b)
            JOIN pipeline_series s ON s.metric_key = w.m
            JOIN pipeline_rollup_1m r ON r.series_id = s.series_id
                 AND r.bucket = 'epoch'::timestamptz + w.b * interval '1 millisecond'
            GROUP BY 1, 2
            ORDER BY 1, 2
            ON CONFLICT (metric_key, bucket) DO UPDATE
            SET hosts = EXCLUDED.hosts, p50 = EXCLUDED.p50, p95 = EXCLUDED.p95, max = EXCLUDED.max,
                peak = EXCLUDED.peak
            """,
            [m for m, _ in wanted], [b for _, b in wanted],
        )
    return int(status.split()[-1])


async def prune(conn: asyncpg.Connection, keep_days: float) -> int:
    """Forget stored batch keys older than the queue could still deliver them again."""
    status = await conn.execute("DELETE FROM pipeline_batches WHERE stored_at < now() - $1 * interval '1 day'",
                                float(keep_days))
    return int(status.split()[-1])

