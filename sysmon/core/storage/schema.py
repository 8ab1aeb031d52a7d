"""Connections and versioned migrations, applied at start-up under an advisory lock.

Migration files are sysmon/core/migrations/NNNN_name.sql (both paths), NNNN_name.plain.sql or
NNNN_name.timescale.sql. The path is chosen once, on the first migration, and recorded, so a
database never changes path under its data.
"""

from __future__ import annotations

import contextlib
import logging
import re
from datetime import timedelta
from importlib import resources
from typing import Any, Literal

import asyncpg

log = logging.getLogger(__name__)

Mode = Literal["plain", "timescale"]
_FILE = re.compile(r"(\d{4})_([a-z0-9_]+?)(?:\.(plain|timescale))?\.sql\Z")
_LOCK_KEY = 0x5359534D4F4E  # "SYSMON"


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=_json_dumps, decoder=_json_loads, schema="pg_catalog")


def _json_dumps(v: Any) -> str:
    import json

    return json.dumps(v, separators=(",", ":"), sort_keys=True)


def _json_loads(s: str) -> Any:
    import json

    return json.loads(s)


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10, **kwargs: Any) -> asyncpg.Pool:
    """A pool whose sessions speak UTC and map jsonb to Python objects."""
    return await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        server_settings={"timezone": "UTC", "application_name": "sysmon"},
        **kwargs,
    )


def migration_files(mode: Mode) -> list[tuple[int, str, str]]:
    """(version, name, sql) of the migrations for this path, in order."""
    out = []
    for entry in resources.files("sysmon.core.migrations").iterdir():
        m = _FILE.match(entry.name)
        if not m or (m.group(3) and m.group(3) != mode):
            continue
        out.append((int(m.group(1)), m.group(2), entry.read_text()))
    out.sort()
    versions = [v for v, _, _ in out]
    if len(versions) != len(set(versions)):
        raise RuntimeError(f"two migrations share a version for path {mode}: {versions}")
    return out


async def _timescale_available(conn: asyncpg.Connection) -> bool:
    return bool(await conn.fetchval("SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'"))


PRELOAD_HINT = ("add timescaledb to shared_preload_libraries in postgresql.conf (or run the TimescaleDB image) "
                "and restart PostgreSQL")


async def _create_timescale(conn: asyncpg.Connection) -> str | None:
    """Create the extension (inside the caller's transaction, in a savepoint); None when it is there,
    else why not, naming what to do."""
    try:
        async with conn.transaction():
            await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except asyncpg.PostgresError as e:
        if not await _timescale_available(conn):
            return f"the timescaledb extension is not installed ({e})"
        return f"the timescaledb extension is installed but cannot be created: {e}; {PRELOAD_HINT}"
    return None


async def _decide(conn: asyncpg.Connection, requested: Literal["auto", "plain", "timescale"]) -> Mode:
    """The storage path for a new database, decided only once the extension really was created."""
    if requested == "plain":
        return "plain"
    why = await _create_timescale(conn) if requested == "timescale" or await _timescale_available(conn) else \
        "the timescaledb extension is not installed"
    if why is None:
        return "timescale"
    if requested == "timescale":
        raise RuntimeError(f"--storage-mode timescale: {why}")
    if "cannot be created" in why:
        log.warning("storage: plain PostgreSQL, since %s", why)
    else:
        log.info("storage: plain PostgreSQL (%s)", why)
    return "plain"


async def migrate(conn: asyncpg.Connection, requested: Literal["auto", "plain", "timescale"] = "auto") -> Mode:
    """Bring the schema up to date and return the storage path in use.

    A new database's path is decided in the same transaction as its first migrations, and only
    after the extension was created: a TimescaleDB that is installed but cannot load (not in
    shared_preload_libraries) means plain PostgreSQL, never a database stuck half way.
    """
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS sysmon_meta (key text PRIMARY KEY, value text NOT NULL);
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version integer PRIMARY KEY,
                name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            );
            """
        )
        stored = await conn.fetchval("SELECT value FROM sysmon_meta WHERE key = 'storage_mode'")
        applied = {r["version"]: r["name"] for r in await conn.fetch("SELECT version, name FROM schema_migrations")}
        if stored is not None and not _path_specific_applied(stored, applied):
            # Recorded by an older sysmon before its path's first migration failed: decide again.
            log.warning("storage path %s was recorded but never set up; deciding again", stored)
            stored = None
        if stored is None:
            async with conn.transaction():
                mode = await _decide(conn, requested)
                await conn.execute(
                    "INSERT INTO sysmon_meta VALUES ('storage_mode', $1) ON CONFLICT (key) DO UPDATE "
                    "SET value = EXCLUDED.value", mode)
                await _apply(conn, mode, applied)
            return mode
        mode = stored
        if requested not in ("auto", stored):
            raise RuntimeError(f"this database uses the {stored} storage path; it cannot switch to {requested}")
        await _apply(conn, mode, applied, each_in_a_transaction=True)
        return mode
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)


def _path_specific_applied(mode: str, applied: dict[int, str]) -> bool:
    """Whether any migration written for this path alone (NNNN_name.<mode>.sql) was applied."""
    specific = set()
    for entry in resources.files("sysmon.core.migrations").iterdir():
        m = _FILE.match(entry.name)
        if m and m.group(3) == mode:
            specific.add(int(m.group(1)))
    return bool(specific & applied.keys()) or not specific


async def _apply(conn: asyncpg.Connection, mode: Mode, applied: dict[int, str], *,
                 each_in_a_transaction: bool = False) -> None:
    for version, name, sql in migration_files(mode):
        if version in applied:
            continue
        log.info("applying migration %04d_%s (%s)", version, name, mode)
        async with conn.transaction() if each_in_a_transaction else contextlib.nullcontext():
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)


async def storage_mode(conn: asyncpg.Connection) -> Mode:
    return await conn.fetchval("SELECT value FROM sysmon_meta WHERE key = 'storage_mode'")


async def apply_timescale_policies(
    conn: asyncpg.Connection, *, raw: timedelta, rollup_1m: timedelta, rollup_1h: timedelta
) -> None:
    """Retention policies from the configured retentions; rollups and sealing are sysmon's own jobs
    on both paths (migration 0007).

    Not run here (no TimescaleDB on this machine); written against the documented API:
    add_retention_policy with drop_after, removed first so that changed retentions take effect.
    """
    statements: list[tuple[str, tuple[Any, ...]]] = []
    for table, keep in (("raw_frames", raw), ("samples_sealed", raw), ("rollup_1m", rollup_1m),
                        ("rollup_1h", rollup_1h)):
        statements.append((f"SELECT remove_retention_policy('{table}', if_exists => true)", ()))
        statements.append((f"SELECT add_retention_policy('{table}', drop_after => $1::interval)", (keep,)))
    async with conn.transaction():
        for sql, args in statements:
            await conn.execute(sql, *args)


# TimescaleDB's background jobs on our hypertables, with their last outcome and error.
TIMESCALE_JOBS_SQL = """
SELECT j.job_id, j.proc_name, j.hypertable_name, s.last_run_status, s.total_failures,
       (SELECT e.err_message FROM timescaledb_information.job_errors e
        WHERE e.job_id = j.job_id ORDER BY e.start_time DESC LIMIT 1) AS last_error
FROM timescaledb_information.jobs j JOIN timescaledb_information.job_stats s USING (job_id)
WHERE j.hypertable_name IN ('raw_frames', 'samples_sealed', 'rollup_1m', 'rollup_1h')
"""
