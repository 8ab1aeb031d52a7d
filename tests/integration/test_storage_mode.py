"""Choosing the storage path of a new database: TimescaleDB only once its extension was really
created, in the same transaction as the first migrations, so a database is never left stuck.

TimescaleDB is not installed here. "Installed but not loadable" (the package present, the library
missing from shared_preload_libraries) is what makes a database stuck: pg_available_extensions
lists it, CREATE EXTENSION fails. The tests make the catalogue say it is available and let the
real CREATE EXTENSION fail with the real error PostgreSQL raises for an unavailable extension.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import asyncpg
import pytest

from sysmon.core.embedded import EmbeddedPostgres
from sysmon.core.storage import schema

_n = 0


@pytest.fixture
async def fresh(pg_server: EmbeddedPostgres) -> AsyncIterator[asyncpg.Connection]:
    """A connection to an empty database (not the migrated template)."""
    global _n
    _n += 1
    name = f"mode_{_n}"
    admin = await asyncpg.connect(pg_server.dsn("postgres"))
    await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    await admin.execute(f"CREATE DATABASE {name}")
    conn = await asyncpg.connect(pg_server.dsn(name))
    yield conn
    await conn.close()
    await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    await admin.close()


@pytest.fixture
def installed_but_not_loadable(monkeypatch: pytest.MonkeyPatch) -> None:
    async def listed(_conn: asyncpg.Connection) -> bool:
        return True

    monkeypatch.setattr(schema, "_timescale_available", listed)


async def test_auto_falls_back_to_plain_naming_shared_preload_libraries(
    fresh: asyncpg.Connection, installed_but_not_loadable: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="sysmon.core.storage.schema"):
        assert await schema.migrate(fresh, "auto") == "plain"
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1
    assert "shared_preload_libraries" in warning[0]
    assert await fresh.fetchval("SELECT value FROM sysmon_meta WHERE key = 'storage_mode'") == "plain"
    assert await fresh.fetchval("SELECT to_regclass('samples_sealed')::text") == "samples_sealed"
    # And it starts again, in either mode it may ask for.
    assert await schema.migrate(fresh, "auto") == "plain"
    assert await schema.migrate(fresh, "plain") == "plain"


async def test_timescale_asked_for_but_not_loadable_is_a_clear_error_and_records_nothing(
    fresh: asyncpg.Connection, installed_but_not_loadable: None
) -> None:
    with pytest.raises(RuntimeError, match="shared_preload_libraries") as err:
        await schema.migrate(fresh, "timescale")
    assert "--storage-mode timescale" in str(err.value)
    assert await fresh.fetchval("SELECT count(*) FROM sysmon_meta") == 0
    assert await fresh.fetchval("SELECT count(*) FROM schema_migrations") == 0
    assert await schema.migrate(fresh, "auto") == "plain"


async def test_timescale_not_installed_at_all_is_said_so(fresh: asyncpg.Connection) -> None:
    with pytest.raises(RuntimeError, match="not installed"):
        await schema.migrate(fresh, "timescale")


async def test_a_database_an_older_sysmon_left_stuck_is_decided_again(
    fresh: asyncpg.Connection, installed_but_not_loadable: None
) -> None:
    """What older versions left: 'timescale' recorded, the shared migration applied, the
    TimescaleDB one failed."""
    await fresh.execute("CREATE TABLE sysmon_meta (key text PRIMARY KEY, value text NOT NULL)")
    await fresh.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, "
                        "applied_at timestamptz NOT NULL DEFAULT now())")
    await fresh.execute("INSERT INTO sysmon_meta VALUES ('storage_mode', 'timescale')")
    [(version, name, sql)] = [m for m in schema.migration_files("plain") if m[0] == 1]
    await fresh.execute(sql)
    await fresh.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
    assert await schema.migrate(fresh, "auto") == "plain"
    assert await fresh.fetchval("SELECT value FROM sysmon_meta WHERE key = 'storage_mode'") == "plain"
    assert await fresh.fetchval("SELECT count(*) FROM schema_migrations") == len(schema.migration_files("plain"))
