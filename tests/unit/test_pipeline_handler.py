"""The Lambda handler on recorded events: SQS records as Lambda passes them -> rows in a real PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import json
import zlib
from collections.abc import AsyncIterator
from decimal import Decimal

import asyncpg
import pytest

from sysmon.core.metrics import series_id
from sysmon.pb.v1 import events_pb2
from sysmon.pipeline import lambda_handler, samples, store, wire
from tests.helpers import wait_for
from tests.pipeline_helpers import LambdaContext, minutes, percentile_cont, recorded_events, sqs_event, sqs_record

HOSTS = ["node-a", "node-b", "node-c"]


@pytest.fixture
async def handler_db(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[asyncpg.Connection]:
    """A fresh Lambda container whose function writes to this test's database."""
    monkeypatch.setenv("SYSMON_POSTGRES_URL", pg_dsn)
    monkeypatch.delenv("SYSMON_POSTGRES_SECRET", raising=False)
    lambda_handler.reset()
    conn = await asyncpg.connect(pg_dsn)
    yield conn
    await conn.close()
    await asyncio.to_thread(lambda_handler.reset)


async def invoke(event: dict) -> dict:
    # Lambda calls the handler synchronously; it runs its own event loop, so off this one.
    return await asyncio.to_thread(lambda_handler.handler, event, LambdaContext())


async def host_rows(conn: asyncpg.Connection) -> dict[tuple[int, int], tuple]:
    rows = await conn.fetch("SELECT series_id, (extract(epoch FROM bucket) * 1000)::int8 AS b, min, max, sum, count "
                            "FROM pipeline_rollup_1m")
    return {(r["series_id"], r["b"]): (r["min"], r["max"], r["sum"], r["count"]) for r in rows}


async def test_recorded_batches_become_the_1_minute_numbers_and_a_fleet_summary(
    handler_db: asyncpg.Connection,
) -> None:
    shift = {"node-a": 0.0, "node-b": 0.25, "node-c": 1.5}
    events = recorded_events(HOSTS, frames=30, per_batch=6, shift=shift)
    # Messages as the exporter packs them: several batches to a message, hosts mixed.
    messages = [wire.encode(events[i:i + 3]) for i in range(0, len(events), 3)]
    assert {m.encoding for m in messages} == {wire.DEFLATE}
    response = await invoke(sqs_event(messages))
    assert response == {"batchItemFailures": []}

    expected = minutes(events)
    got = await host_rows(handler_db)
    assert got.keys() == expected.keys()
    for k, m in expected.items():
        assert got[k] == (m.min, m.max, m.sum, m.count), k
    # The sums are exact: not the float sum, the sum of each value as PostgreSQL prints it.
    assert all(isinstance(v[2], Decimal) for v in got.values())

    # Fleet: per metric (name + attributes) and minute, across the three hosts' minute means.
    fleet = await handler_db.fetch(
        "SELECT name, attributes, (extract(epoch FROM bucket) * 1000)::int8 AS b, hosts, p50, p95, max, peak "
        "FROM pipeline_fleet_1m WHERE name = 'system.cpu.utilization' AND attributes = $1::jsonb",
        json.dumps({"cpu": "total", "state": "user"}),
    )
    assert fleet
    for row in fleet:
        attrs = json.loads(row["attributes"])
        per_host = [expected[(series_id(h, row["name"], attrs), row["b"])] for h in HOSTS]
        means = [float(m.sum / m.count) for m in per_host]
        assert row["hosts"] == 3
        assert row["p50"] == pytest.approx(percentile_cont(means, 0.5), rel=1e-12)
        assert row["p95"] == pytest.approx(percentile_cont(means, 0.95), rel=1e-12)
        assert row["max"] == pytest.approx(max(means), rel=1e-12)
        assert row["peak"] == max(m.max for m in per_host)
    assert await handler_db.fetchval("SELECT count(DISTINCT name) FROM pipeline_fleet_1m") >= 5


async def test_a_message_delivered_again_changes_nothing(handler_db: asyncpg.Connection) -> None:
    events = recorded_events(HOSTS[:2], frames=12, per_batch=4)
    messages = [wire.encode(events[i:i + 2]) for i in range(0, len(events), 2)]
    assert await invoke(sqs_event(messages)) == {"batchItemFailures": []}
    before = await host_rows(handler_db)
    fleet_before = await handler_db.fetch("SELECT * FROM pipeline_fleet_1m ORDER BY metric_key, bucket")

    # Again whole, again one by one, and a message that repeats a batch of another one with a new one.
    assert await invoke(sqs_event(messages)) == {"batchItemFailures": []}
    for m in messages:
        assert await invoke(sqs_event([m])) == {"batchItemFailures": []}
    assert await host_rows(handler_db) == before
    assert await handler_db.fetch("SELECT * FROM pipeline_fleet_1m ORDER BY metric_key, bucket") == fleet_before

    later = recorded_events(HOSTS[:1], frames=4, per_batch=4, start=12)
    later[0].seq = 99
    assert await invoke(sqs_event([wire.encode([events[0], later[0]])])) == {"batchItemFailures": []}
    expected = minutes([*events, later[0]])
    got = await host_rows(handler_db)
    assert {k: (m.min, m.max, m.sum, m.count) for k, m in expected.items()} == got


def _bad_records() -> dict[str, dict]:
    good = recorded_events(["node-a"], frames=2, per_batch=2)[0]
    enc = wire.encode([good])

    def with_event(change) -> dict:
        ev = events_pb2.SamplesEvent()
        ev.CopyFrom(good)
        change(ev)
        e = wire.encode([ev])
        return sqs_record(e.body, e.attributes)

    other = recorded_events(["node-b"], frames=2, per_batch=2)[0]
    theft = events_pb2.SamplesEvent()
    theft.CopyFrom(other)
    del theft.series[:]  # node-b's frames, pointing at node-a's series that the message describes
    theft.frames[0].series_ids[:] = [s.id for s in good.series][:len(theft.frames[0].series_ids)]
    stolen = wire.encode([good, theft])
    raw = base64.b64encode(zlib.compress(b"\xff" * 64)).decode()
    bomb = base64.b64encode(zlib.compress(b"\x00" * (wire.MAX_DECODED_BYTES + 1))).decode()
    return {
        "not base64": sqs_record("%%% not base64 %%%", enc.attributes),
        "no attributes": sqs_record(enc.body, {}),
        "not protobuf": sqs_record(raw, enc.attributes),
        "inflates past the limit": sqs_record(bomb, enc.attributes),
        "NaN value": with_event(lambda ev: ev.frames[0].values.__setitem__(0, float("nan"))),
        "undescribed series": with_event(lambda ev: ev.frames[0].series_ids.__setitem__(0, 12345)),
        "forged series id": with_event(lambda ev: setattr(ev.series[0], "id", 777)),
        "bad host id": with_event(lambda ev: setattr(ev, "host_id", "../etc")),
        "ids and values differ": with_event(lambda ev: ev.frames[0].values.append(1.0)),
        "another host's series": sqs_record(stolen.body, stolen.attributes),
    }


async def test_malformed_records_are_reported_and_the_others_stored(handler_db: asyncpg.Connection) -> None:
    bad = _bad_records()
    good_events = recorded_events(["node-b"], frames=6, per_batch=3)
    good = [sqs_record(e.body, e.attributes) for e in (wire.encode([ev]) for ev in good_events)]
    records = [good[0], *bad.values(), good[1]]
    response = await invoke({"Records": records})
    failed = {f["itemIdentifier"] for f in response["batchItemFailures"]}
    assert failed == {r["messageId"] for r in bad.values()}
    expected = minutes(good_events)
    assert (await host_rows(handler_db)).keys() == expected.keys()


@pytest.mark.parametrize("reason", ["NaN value", "forged series id", "inflates past the limit", "no attributes",
                                    "another host's series"])
def test_a_malformed_message_is_refused_with_its_reason(reason: str) -> None:
    r = _bad_records()[reason]
    with pytest.raises(wire.WireError) as e:
        samples.check(wire.decode(r["body"], r["messageAttributes"]).events)
    words = {"NaN value": "not finite", "forged series id": "not the id of this host's series",
             "inflates past the limit": "inflates past", "no attributes": "content-type",
             "another host's series": "of this host are not described"}[reason]
    assert words in str(e.value)


async def test_the_connection_is_reused_and_made_again_when_lost(handler_db: asyncpg.Connection) -> None:
    events = recorded_events(["node-a"], frames=12, per_batch=3)
    messages = [wire.encode([ev]) for ev in events]
    for m in messages[:2]:
        assert await invoke(sqs_event([m])) == {"batchItemFailures": []}
    db = lambda_handler.database()
    assert db.connects == 1
    # PostgreSQL drops the connection between invocations (a failover, an idle timeout).
    await handler_db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE application_name = 'sysmon-pipeline'")
    # The next invocation finds the connection gone, connects again and stores its batch.
    assert await invoke(sqs_event(messages[2:])) == {"batchItemFailures": []}
    assert db.connects == 2
    assert await host_rows(handler_db) == {k: (m.min, m.max, m.sum, m.count) for k, m in minutes(events).items()}


def test_credentials_from_an_rds_secret() -> None:
    secret = {"username": "pipe line", "password": "p@ss/w:rd", "host": "db.example", "port": 5433,
              "dbname": "metrics", "engine": "postgres"}
    assert lambda_handler.resolve_dsn({"SYSMON_POSTGRES_SECRET": "arn:s"}, lambda name: secret) == (
        "postgresql://pipe%20line:p%40ss%2Fw%3Ard@db.example:5433/metrics?sslmode=require")
    assert lambda_handler.resolve_dsn({"SYSMON_POSTGRES_URL": "postgresql://x/y"}) == "postgresql://x/y"
    with pytest.raises(lambda_handler.ConfigError, match="SYSMON_POSTGRES_URL or SYSMON_POSTGRES_SECRET"):
        lambda_handler.resolve_dsn({})
    with pytest.raises(lambda_handler.ConfigError, match="has no password"):
        lambda_handler.resolve_dsn({"SYSMON_POSTGRES_SECRET": "s"}, lambda name: {"username": "u", "host": "h"})


async def test_concurrent_invocations_leave_every_fleet_row_complete(pg_dsn: str) -> None:
    """Eight containers store eight hosts' batches of the same minutes at once: each fleet row is
    recomputed under its (metric, minute) lock, so none misses a host another was committing."""
    hosts = [f"node-{i}" for i in range(8)]
    events = recorded_events(hosts, frames=12, per_batch=12)
    conns = [await asyncpg.connect(pg_dsn) for _ in hosts]
    try:
        await store.ensure_schema(conns[0])
        async def container(conn: asyncpg.Connection, ev: events_pb2.SamplesEvent) -> None:
            await store.store(conn, [samples.check([ev])])

        await asyncio.gather(*(container(c, ev) for c, ev in zip(conns, events, strict=True)))
        counts = {r["hosts"] for r in await conns[0].fetch("SELECT hosts FROM pipeline_fleet_1m")}
        assert counts == {8}
    finally:
        for c in conns:
            await c.close()


async def test_a_fleet_refresh_waits_for_another_refresh_of_the_same_row(pg_dsn: str) -> None:
    """Two refreshes of one (metric, minute) never interleave: the later one starts after the earlier
    committed, so it reads every host the earlier one saw, and more."""
    a, b = await asyncpg.connect(pg_dsn), await asyncpg.connect(pg_dsn)
    try:
        await store.ensure_schema(a)
        checked = samples.check(recorded_events(["node-a"], frames=2, per_batch=2))
        await store.store(a, checked)
        buckets = samples.flatten(checked.events, checked.rows).fleet_buckets
        async with a.transaction():
            await a.execute("SELECT pg_advisory_xact_lock($1)", store._lock_key(*min(buckets)))
            refresh = asyncio.create_task(store.refresh_fleet(b, buckets))
            pid = b.get_server_pid()
            await wait_for(lambda: a.fetchval("SELECT count(*) FROM pg_locks WHERE pid = $1 AND NOT granted "
                                              "AND locktype = 'advisory'", pid),
                           message="the second refresh waiting for the row's lock")
            assert not refresh.done()
        assert await refresh == len(buckets)
    finally:
        await a.close()
        await b.close()


async def test_a_batch_that_cannot_be_stored_comes_back_whole_and_is_stored_on_redelivery(
    handler_db: asyncpg.Connection,
) -> None:
    events = recorded_events(HOSTS, frames=6, per_batch=6)
    records = sqs_event([wire.encode([ev]) for ev in events])["Records"]
    assert await invoke({"Records": records[:1]}) == {"batchItemFailures": []}  # the tables exist
    # The fleet table refuses writes for a while (a full disk, a lock timeout, ...).
    await handler_db.execute("ALTER TABLE pipeline_fleet_1m ADD CONSTRAINT refuse CHECK (hosts < 0) NOT VALID")
    response = await invoke({"Records": records[1:]})
    assert {f["itemIdentifier"] for f in response["batchItemFailures"]} == {r["messageId"] for r in records[1:]}
    assert await handler_db.fetchval("SELECT max(hosts) FROM pipeline_fleet_1m") == 1
    await handler_db.execute("ALTER TABLE pipeline_fleet_1m DROP CONSTRAINT refuse")
    assert (await host_rows(handler_db)).keys() == minutes(events[:1]).keys()  # nothing of the failed batch
    # Delivered again, once the table takes writes: all of it is stored.
    assert await invoke({"Records": records[1:]}) == {"batchItemFailures": []}
    assert {r["hosts"] for r in await handler_db.fetch("SELECT hosts FROM pipeline_fleet_1m")} == {3}
    assert await host_rows(handler_db) == {k: (m.min, m.max, m.sum, m.count) for k, m in minutes(events).items()}
