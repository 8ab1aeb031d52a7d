"""Connections and versioned migrations, applied at start-up under an advisory lock.

Migration files are sysmon/core/migrations/NNNN_name.sql (both paths), NNNN_name.plain.sql or
NNNN_name.timescale.sql. The path is chosen once, on the first migration, and recorded, so a
database never changes path under its data.
"""

from __future__ import annotations

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


async def migrate(conn: asyncpg.Connection, requested: Literal["auto", "plain", "timescale"] = "auto") -> Mode:
    """Bring the schema up to date and return the storage path in use."""
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
        if stored is None:
            if requested == "auto":
                mode: Mode = "timescale" if await _timescale_available(conn) else "plain"
            else:
                mode = requested
            await conn.execute("INSERT INTO sysmon_meta VALUES ('storage_mode', $1)", mode)
        else:
            mode = stored
            if requested not in ("auto", stored):
                raise RuntimeError(
                    f"this database uses the {stored} storage path; it cannot switch to {requested}"
                )
        applied = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in migration_files(mode):
            if version in applied:
                continue
            log.info("applying migration %04d_%s (%s)", version, name, mode)
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
        return mode
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)


async def storage_mode(conn: asyncpg.Connection) -> Mode:
    return await conn.fetchval("SELECT value FROM sysmon_meta WHERE key = 'storage_mode'")


async def apply_timescale_policies(
    conn: asyncpg.Connection, *, raw: timedelta, rollup_1m: timedelta, rollup_1h: timedelta
) -> None:
    """Refresh, compression and retention policies from the configured retentions.

    Not run here (no TimescaleDB on this machine); written against the documented API:
    add_continuous_aggregate_policy, add_compression_policy, add_retention_policy, each with
    if_not_exists, removed first so that changed retentions take effect.
    """
    statements: list[tuple[str, tuple[Any, ...]]] = [
        ("SELECT remove_continuous_aggregate_policy('rollup_1m', if_exists => true)", ()),
        (
            "SELECT add_continuous_aggregate_policy('rollup_1m', start_offset => $1::interval, "
            "end_offset => INTERVAL '1 minute', schedule_interval => INTERVAL '30 seconds')",
            (raw,),
        ),
        ("SELECT remove_continuous_aggregate_policy('rollup_1h', if_exists => true)", ()),
        (
            "SELECT add_continuous_aggregate_policy('rollup_1h', start_offset => $1::interval, "
            "end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '5 minutes')",
            (rollup_1m,),
        ),
        ("SELECT remove_compression_policy('samples_raw', if_exists => true)", ()),
        ("SELECT add_compression_policy('samples_raw', compress_after => INTERVAL '2 hours')", ()),
    ]
    for table, keep in (("samples_raw", raw), ("rollup_1m", rollup_1m), ("rollup_1h", rollup_1h)):
        statements.append((f"SELECT remove_retention_policy('{table}', if_exists => true)", ()))
        statements.append((f"SELECT add_retention_policy('{table}', drop_after => $1::interval)", (keep,)))
    async with conn.transaction():
        for sql, args in statements:
            await conn.execute(sql, *args)
