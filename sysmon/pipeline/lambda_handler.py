"""The Lambda function: SQS messages of the samples topic -> per-host and fleet 1-minute rollups.

    handler = sysmon.pipeline.lambda_handler.handler

Each SQS record is decoded and checked (sysmon.pipeline.wire, .samples), then stored in one
transaction of its own (sysmon.pipeline.store): a record that fails is reported in
`batchItemFailures` by Powertools' BatchProcessor, and only it is delivered again (the event
source mapping needs `function_response_types = ["ReportBatchItemFailures"]`); after the queue's
maxReceiveCount it lands in the dead-letter queue.

Configuration, from the environment:
- SYSMON_POSTGRES_URL: a PostgreSQL DSN; or
- SYSMON_POSTGRES_SECRET: a Secrets Manager secret (name or ARN) in the shape RDS writes
  ({"username", "password", "host", "port", "dbname"}), read with Powertools' parameters utility;
  SYSMON_POSTGRES_SSLMODE (default "require" for a secret) is added to its DSN.
- SYSMON_PIPELINE_DEDUP_DAYS (default 15, above SQS's longest retention of 14 days): how long the keys
  of stored batches are kept to recognise a delivery again.

The connection (and the event loop it lives on) outlives an invocation: a warm container reuses
it, and connects again only when it was lost.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import asyncpg
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from sysmon.pipeline import samples, store, wire

logger = Logger(service=os.environ.get("POWERTOOLS_SERVICE_NAME", "sysmon-pipeline"))
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "sysmon"))
# A batch whose every record failed is answered like any other (all of it in batchItemFailures), not raised.
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)

CONNECT_TIMEOUT_S = 10.0
PRUNE_EVERY_S = 3600.0


class ConfigError(RuntimeError):
    """The function's environment does not say where PostgreSQL is."""


def dsn_from_secret(secret: Mapping[str, Any], sslmode: str = "require") -> str:
    """A DSN from an RDS-style secret; pure, so that the shape is tested without AWS."""
    missing = [k for k in ("username", "password", "host") if not secret.get(k)]
    if missing:
        raise ConfigError(f"the PostgreSQL secret has no {', '.join(missing)}")
    user, password = quote(str(secret["username"]), safe=""), quote(str(secret["password"]), safe="")
    db = quote(str(secret.get("dbname") or "postgres"), safe="")
    host, port = str(secret["host"]), int(secret.get("port") or 5432)
    if host.startswith("/"):  # a Unix socket's directory (a proxy's sidecar, the tests' embedded server)
        return f"postgresql://{user}:{password}@/{db}?host={quote(host)}&port={port}&sslmode={sslmode}"
    return f"postgresql://{user}:{password}@{host}:{port}/{db}?sslmode={sslmode}"


def resolve_dsn(env: Mapping[str, str], get_secret: Callable[[str], Any] | None = None) -> str:
    if env.get("SYSMON_POSTGRES_URL"):
        return env["SYSMON_POSTGRES_URL"]
    name = env.get("SYSMON_POSTGRES_SECRET")
    if not name:
        raise ConfigError("set SYSMON_POSTGRES_URL or SYSMON_POSTGRES_SECRET (a Secrets Manager secret)")
    if get_secret is None:
        from aws_lambda_powertools.utilities import parameters

        def get_secret(n: str) -> Any:
            return parameters.get_secret(n, transform="json", max_age=300)

    secret = get_secret(name)
    if not isinstance(secret, Mapping):
        raise ConfigError(f"secret {name} is not a JSON object")
    return dsn_from_secret(secret, env.get("SYSMON_POSTGRES_SSLMODE", "require"))


class Database:
    """One connection per container, on one event loop that every invocation runs on."""

    def __init__(self, env: Mapping[str, str] = os.environ):
        self.env = env
        self.loop = asyncio.new_event_loop()
        self.conn: asyncpg.Connection | None = None
        self.catalog = samples.Catalog()
        self.connects = 0
        self._pruned_at = 0.0

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def connection(self) -> asyncpg.Connection:
        if self.conn is None or self.conn.is_closed():
            # Custom plans always: a generic plan of the unnest() statements guesses the arrays' sizes
            # and, once chosen (after five executions), made the fleet statement 20 times slower.
            self.conn = await asyncpg.connect(resolve_dsn(self.env), timeout=CONNECT_TIMEOUT_S, server_settings={
                "application_name": "sysmon-pipeline", "plan_cache_mode": "force_custom_plan"})
            self.connects += 1
            self.catalog.stored.clear()  # perhaps another server now (a failover): insert series again
            await store.ensure_schema(self.conn)
            logger.info("connected to PostgreSQL", extra={"connects": self.connects})
        if time.monotonic() - self._pruned_at > PRUNE_EVERY_S or self._pruned_at == 0.0:
            self._pruned_at = time.monotonic()
            forgot = await store.prune(self.conn, float(self.env.get("SYSMON_PIPELINE_DEDUP_DAYS", "15")))
            if forgot:
                logger.info("forgot old batch keys", extra={"batch_keys": forgot})
        return self.conn

    async def store(self, checked: samples.Checked) -> store.Stored:
        return await self._on_connection(lambda conn: store.store(conn, checked, self.catalog))

    async def refresh_fleet(self, buckets: set[tuple[int, int]]) -> int:
        return await self._on_connection(lambda conn: store.refresh_fleet(conn, buckets))

    async def _on_connection(self, work: Callable[[asyncpg.Connection], Any]) -> Any:
        conn = await self.connection()
        try:
            return await work(conn)
        except (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError):
            # The connection is gone (PostgreSQL restarted, the network dropped): the next record connects again.
            conn.terminate()
            self.conn = None
            raise

    def close(self) -> None:
        if self.conn is not None:
            self.run(self.conn.close())
            self.conn = None


_db: Database | None = None
# The fleet rows the records of this invocation touched, refreshed once after them all.
_touched: set[tuple[int, int]] = set()
DB_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


def database() -> Database:
    global _db
    if _db is None:
        _db = Database()
    return _db


def reset() -> None:
    """Forget the container's connection (tests start a fresh 'container' with another environment)."""
    global _db
    if _db is not None:
        _db.close()
        _db.loop.close()
    _db = None


def record_handler(record: SQSRecord) -> store.Stored:
    try:
        db = database()
        checked = samples.check(wire.decode(record.body, record.raw_event.get("messageAttributes") or {}).events,
                                db.catalog)
    except wire.WireError as e:
        # Named in the log with the message id; the record goes back to the queue, and after
        # maxReceiveCount to the dead-letter queue, where it can be read.
        logger.error("malformed record", extra={"message_id": record.message_id, "reason": str(e)})
        metrics.add_metric(name="MalformedRecords", unit=MetricUnit.Count, value=1)
        raise
    stored = db.run(db.store(checked))
    _touched.update(stored.fleet_buckets)
    metrics.add_metric(name="BatchesStored", unit=MetricUnit.Count, value=stored.parts)
    metrics.add_metric(name="DuplicateBatches", unit=MetricUnit.Count, value=stored.duplicates)
    metrics.add_metric(name="SamplesStored", unit=MetricUnit.Count, value=stored.samples)
    return stored


@metrics.log_metrics
@logger.inject_lambda_context
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    _touched.clear()
    response = process_partial_response(event=event, record_handler=record_handler, processor=processor,
                                        context=context)
    if _touched:
        try:
            rows = database().run(database().refresh_fleet(_touched))
            metrics.add_metric(name="FleetRowsRefreshed", unit=MetricUnit.Count, value=rows)
        except DB_ERRORS as e:
            # The per-host rows are committed; delivered again (as duplicates) the records refresh the
            # fleet rows they touch, so every record goes back to the queue.
            logger.error("fleet refresh failed: every record of the batch is delivered again",
                         extra={"reason": str(e)})
            response = {"batchItemFailures": [{"itemIdentifier": r["messageId"]} for r in event.get("Records", [])]}
        finally:
            _touched.clear()
    failures = response.get("batchItemFailures", [])
    metrics.add_metric(name="RecordsFailed", unit=MetricUnit.Count, value=len(failures))
    metrics.add_metric(name="Records", unit=MetricUnit.Count, value=len(event.get("Records", [])))
    return response
