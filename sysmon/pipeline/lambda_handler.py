"""The Lambda function: SQS messages of the samples topic -> per-host and fleet 1-minute rollups.

    handler = sysmon.pipeline.lambda_handler.handler

Each SQS record is decoded and checked (sysmon.pipeline.wire, .samples) by Powertools'
BatchProcessor: a record that fails is reported in `batchItemFailures`, and only it is delivered
again (the event source mapping needs `function_response_types = ["ReportBatchItemFailures"]`);
after the queue's maxReceiveCount it lands in the dead-letter queue. The records that pass are then
stored together in one transaction (sysmon.pipeline.store): one commit and one statement per table
for the whole batch. When that fails (PostgreSQL away), nothing of it is stored and every one of
them is reported, to come again.

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

    async def store(self, checked: list[samples.Checked]) -> store.Stored:
        return await self._on_connection(lambda conn: store.store(conn, checked, self.catalog))

    async def _on_connection(self, work: Callable[[asyncpg.Connection], Any]) -> Any:
        """The work on the container's connection; once more on a new one when that was found gone
        (an idle timeout, a failover between invocations). Safe: stored batches are not stored twice."""
        for attempt in (1, 2):
            conn = await self.connection()
            try:
                return await work(conn)
            except (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError) as e:
                conn.terminate()
                self.conn = None
                if attempt == 2:
                    raise
                logger.warning("the PostgreSQL connection was lost; connecting again", extra={"reason": str(e)})
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.run(self.conn.close())
            self.conn = None


_db: Database | None = None
# The records of this invocation that passed their checks, stored together after them all.
_passed: list[tuple[str, samples.Checked]] = []
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


def record_handler(record: SQSRecord) -> None:
    try:
        checked = samples.check(wire.decode(record.body, record.raw_event.get("messageAttributes") or {}).events,
                                database().catalog)
    except wire.WireError as e:
        # Named in the log with the message id; the record goes back to the queue, and after
        # maxReceiveCount to the dead-letter queue, where it can be read.
        logger.error("malformed record", extra={"message_id": record.message_id, "reason": str(e)})
        metrics.add_metric(name="MalformedRecords", unit=MetricUnit.Count, value=1)
        raise
    _passed.append((record.message_id, checked))


@metrics.log_metrics
@logger.inject_lambda_context
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    _passed.clear()
    response = process_partial_response(event=event, record_handler=record_handler, processor=processor,
                                        context=context)
    if _passed:
        try:
            stored = database().run(database().store([c for _, c in _passed]))
            metrics.add_metric(name="BatchesStored", unit=MetricUnit.Count, value=stored.parts)
            metrics.add_metric(name="DuplicateBatches", unit=MetricUnit.Count, value=stored.duplicates)
            metrics.add_metric(name="SamplesStored", unit=MetricUnit.Count, value=stored.samples)
            metrics.add_metric(name="FleetRowsRefreshed", unit=MetricUnit.Count, value=stored.fleet_rows)
        except DB_ERRORS as e:
            # Nothing of the batch was stored (one transaction): every record that passed comes again.
            logger.error("storing the batch failed: its records are delivered again",
                         extra={"reason": str(e), "records": len(_passed)})
            failed = {f["itemIdentifier"] for f in response["batchItemFailures"]} | {m for m, _ in _passed}
            response = {"batchItemFailures": [{"itemIdentifier": r["messageId"]} for r in event.get("Records", [])
                                              if r["messageId"] in failed]}
        finally:
            _passed.clear()
    failures = response.get("batchItemFailures", [])
    metrics.add_metric(name="RecordsFailed", unit=MetricUnit.Count, value=len(failures))
    metrics.add_metric(name="Records", unit=MetricUnit.Count, value=len(event.get("Records", [])))
    return response
