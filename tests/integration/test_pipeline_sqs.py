"""The Lambda pipeline against a real SQS API (moto's server on a loopback port): collectors ->
aggregator -> bus -> SQS exporter -> SQS -> received as Lambda's poller receives -> handler ->
PostgreSQL, compared with the built-in 1-minute rollup of the same samples."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import boto3
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from sysmon.core import bus as busmod
from sysmon.core.bus import redis as redis_bus
from sysmon.core.embedded import free_port
from sysmon.core.storage import rollups
from sysmon.core.telemetry import MetricsEndpoint
from sysmon.pb.v1 import events_pb2
from sysmon.pipeline import lambda_handler, wire
from sysmon.pipeline.exporter import SqsExporter, sqs_client
from sysmon.pipeline.settings import SqsExporterSettings
from tests.conftest import AggregatorFactory
from tests.helpers import TcpProxy, running_collector, start_idle_aggregator, wait_for
from tests.pipeline_helpers import LambdaContext, minutes, poll_like_lambda, recorded_events, sqs_event

REGION = "us-east-1"


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """moto's server (the SQS and Secrets Manager HTTP APIs) for the whole session."""
    port = free_port()
    exe = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/moto-api/", timeout=2):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto_server did not start on {url}") from None
            time.sleep(0.1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def sqs(moto_url: str) -> Any:
    return boto3.client("sqs", endpoint_url=moto_url, region_name=REGION)


def make_queues(sqs: Any, *, max_receive: int = 3, visibility: int = 30) -> tuple[str, str]:
    """A queue with a dead-letter queue and a redrive policy, as deploy/terraform/modules/pipeline makes them."""
    name = f"sysmon-{uuid.uuid4().hex[:8]}"
    dlq = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    url = sqs.create_queue(QueueName=name, Attributes={
        "VisibilityTimeout": str(visibility),
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive)}),
    })["QueueUrl"]
    return url, dlq


@pytest.fixture
async def lambda_db(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[asyncpg.Connection]:
    monkeypatch.setenv("SYSMON_POSTGRES_URL", pg_dsn)
    lambda_handler.reset()
    conn = await asyncpg.connect(pg_dsn)
    yield conn
    await conn.close()
    await asyncio.to_thread(lambda_handler.reset)


def exporter_settings(queue_url: str, endpoint: str, **kw: Any) -> SqsExporterSettings:
    return SqsExporterSettings(queue_url=queue_url, endpoint_url=endpoint, region=REGION, linger="100ms",
                               retry_max="500ms", metrics_listen="", **kw)


async def forwarded(redis: aioredis.Redis, group: str) -> bool:
    """Every entry of the samples topic delivered to the exporter's group and acknowledged."""
    key = busmod.stream_key(busmod.SAMPLES)
    g = {redis_bus._s(g["name"]): g for g in await redis.xinfo_groups(key)}.get(group)
    newest = redis_bus._s((await redis.xinfo_stream(key))["last-generated-id"])
    return g is not None and g["pending"] == 0 and redis_bus._s(g["last-delivered-id"]) == newest


async def host_rows(conn: asyncpg.Connection, table: str) -> dict[tuple[int, datetime], tuple]:
    return {(r["series_id"], r["bucket"]): (r["min"], r["max"], r["sum"], r["count"])
            for r in await conn.fetch(f"SELECT series_id, bucket, min, max, sum, count FROM {table}")}


@contextlib.asynccontextmanager
async def exporting(settings: SqsExporterSettings, redis_url: str) -> AsyncIterator[SqsExporter]:
    exporter = SqsExporter(settings, redis_url=redis_url, client=sqs_client(settings))
    stop = asyncio.Event()
    task = asyncio.create_task(exporter.run(stop))
    try:
        yield exporter
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def test_collectors_through_sqs_and_lambda_equal_the_built_in_1_minute_rollup(
    start_aggregator: AggregatorFactory, pool: asyncpg.Pool, redis_url: str, redis_client: aioredis.Redis,
    sqs: Any, moto_url: str, lambda_db: asyncpg.Connection,
) -> None:
    queue, dlq = make_queues(sqs)
    agg = await start_idle_aggregator(start_aggregator)
    settings = exporter_settings(queue, moto_url)
    async with exporting(settings, redis_url) as exporter:
        async with contextlib.AsyncExitStack() as stack:
            collectors = [await stack.enter_async_context(running_collector(agg.address, host_id=h))
                          for h in ("node-a", "node-b")]
            await wait_for(lambda: all(c.buffer.acked >= 6 for c in collectors), within=30,
                           message="six acknowledged batches from each collector")
        await agg.stop(grace=2)  # what it holds is committed, and published
        await wait_for(lambda: forwarded(redis_client, settings.consumer_group), within=30,
                       message="every bus entry forwarded to SQS")
    assert exporter.sent_messages > 0
    assert exporter.sent_samples > 0

    responses = await asyncio.to_thread(poll_like_lambda, sqs, queue, lambda_handler.handler)
    assert responses
    assert all(r == {"batchItemFailures": []} for r in responses)

    async with pool.acquire() as conn:
        await rollups.run_rollups(conn, datetime.now(UTC) + timedelta(hours=2))
    builtin = await host_rows(lambda_db, "rollup_1m")
    ours = await host_rows(lambda_db, "pipeline_rollup_1m")
    assert builtin
    assert ours == builtin
    # The fleet summary has both hosts for the metrics both sampled in the same minute.
    hosts = await lambda_db.fetchval("SELECT max(hosts) FROM pipeline_fleet_1m WHERE name = 'system.memory.usage'")
    assert hosts == 2

    assert sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["ApproximateNumberOfMessages"])[
        "Attributes"]["ApproximateNumberOfMessages"] == "0"


async def test_a_malformed_record_is_reported_and_then_dead_lettered_and_duplicates_store_nothing(
    sqs: Any, lambda_db: asyncpg.Connection,
) -> None:
    queue, dlq = make_queues(sqs, max_receive=2, visibility=0)
    events = recorded_events(["node-a", "node-b"], frames=12, per_batch=4)
    good = [wire.encode(events[i:i + 2]) for i in range(0, len(events), 2)]
    bad = wire.encode(recorded_events(["node-c"], frames=2, per_batch=2))
    broken = bad.attributes | {wire.ATTR_ENCODING: {"DataType": "String", "StringValue": "zstd"}}
    entries = [{"Id": str(i), "MessageBody": m.body, "MessageAttributes": m.attributes} for i, m in enumerate(good)]
    entries.append({"Id": "bad", "MessageBody": bad.body, "MessageAttributes": broken})
    sqs.send_message_batch(QueueUrl=queue, Entries=entries)

    responses = await asyncio.to_thread(poll_like_lambda, sqs, queue, lambda_handler.handler)
    failures = [f for r in responses for f in r["batchItemFailures"]]
    # Reported on each of its maxReceiveCount receives, never with the good records.
    assert len(failures) == 2
    dead = sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10, MessageAttributeNames=["All"])["Messages"]
    assert [m["Body"] for m in dead] == [bad.body]
    assert dead[0]["MessageAttributes"][wire.ATTR_ENCODING]["StringValue"] == "zstd"
    expected = {k: (m.min, m.max, m.sum, m.count) for k, m in minutes(events).items()}

    def as_ms(rows: dict) -> dict:
        return {(s, int(b.timestamp() * 1000)): v for (s, b), v in rows.items()}

    assert as_ms(await host_rows(lambda_db, "pipeline_rollup_1m")) == expected
    fleet = await lambda_db.fetch("SELECT * FROM pipeline_fleet_1m ORDER BY metric_key, bucket")

    # Delivered twice more (SQS's at-least-once, an exporter that resent): nothing changes.
    sqs.send_message_batch(QueueUrl=queue, Entries=entries[:-1])
    sqs.send_message_batch(QueueUrl=queue, Entries=entries[:-1])
    responses = await asyncio.to_thread(poll_like_lambda, sqs, queue, lambda_handler.handler)
    assert all(r == {"batchItemFailures": []} for r in responses)
    assert as_ms(await host_rows(lambda_db, "pipeline_rollup_1m")) == expected
    assert await lambda_db.fetch("SELECT * FROM pipeline_fleet_1m ORDER BY metric_key, bucket") == fleet


def _metric(text: str, name: str, labels: str = "") -> float:
    for line in text.splitlines():
        if line.startswith(name + (("{" + labels + "}") if labels else " ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_the_exporter_survives_the_endpoint_going_away_and_resumes_without_loss(
    sqs: Any, moto_url: str, redis_url: str, redis_client: aioredis.Redis, lambda_db: asyncpg.Connection,
) -> None:
    queue, _ = make_queues(sqs)
    proxy = TcpProxy(moto_url)
    await proxy.start()
    settings = exporter_settings(queue, proxy.url)
    bus = busmod.RedisBus(redis_client)
    endpoint = MetricsEndpoint("127.0.0.1:0")
    events = recorded_events(["node-a", "node-b"], frames=48, per_batch=4)
    first, during, after = events[:8], events[8:16], events[16:]

    def metrics() -> str:
        with urllib.request.urlopen(endpoint.url, timeout=5) as r:
            return r.read().decode()

    async def publish(evs: list[events_pb2.SamplesEvent]) -> None:
        for ev in evs:
            await bus.publish(busmod.SAMPLES, events_pb2.SamplesEvents(events=[ev]).SerializeToString())

    failed_before = _metric(metrics(), "sysmon_exporter_sqs_failed_messages_total", 'reason="endpoint"')
    try:
        async with exporting(settings, redis_url) as exporter:
            await publish(first)
            await wait_for(lambda: forwarded(redis_client, settings.consumer_group), message="first batches sent")
            await proxy.stop()
            await publish(during)
            await wait_for(lambda: exporter.failures >= 2, message="sends failing while the endpoint is away")
        # Stopped (a restart) while the endpoint is still away: what it held is unacknowledged.
        assert not await forwarded(redis_client, settings.consumer_group)
        await proxy.start()
        async with exporting(settings, redis_url) as exporter:
            await publish(after)
            await wait_for(lambda: forwarded(redis_client, settings.consumer_group), message="every batch sent")
            await wait_for(lambda: _metric(metrics(), "sysmon_exporter_sqs_lag_entries") == 0,
                           message="lag 0 on /metrics")
        text = metrics()
        assert _metric(text, "sysmon_exporter_sqs_failed_messages_total", 'reason="endpoint"') > failed_before
        assert _metric(text, "sysmon_exporter_sqs_sent_messages_total") > 0
        assert _metric(text, "sysmon_exporter_sqs_sent_samples_total") >= sum(
            len(f.values) for ev in events for f in ev.frames)
    finally:
        endpoint.close()
        if proxy.server is not None:
            await proxy.stop()

    responses = await asyncio.to_thread(poll_like_lambda, sqs, queue, lambda_handler.handler)
    assert all(r == {"batchItemFailures": []} for r in responses)
    stored = await lambda_db.fetch("SELECT host_id, session_id, seq FROM pipeline_batches")
    assert {(r["host_id"], r["session_id"], r["seq"]) for r in stored} == {(e.host_id, e.session_id, e.seq)
                                                                           for e in events}
    rows = {(s, int(b.timestamp() * 1000)): v
            for (s, b), v in (await host_rows(lambda_db, "pipeline_rollup_1m")).items()}
    assert rows == {k: (m.min, m.max, m.sum, m.count) for k, m in minutes(events).items()}


async def test_credentials_from_secrets_manager(moto_url: str, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The function finds PostgreSQL through a Secrets Manager secret in the shape RDS writes."""
    from urllib.parse import parse_qs, urlsplit

    u = urlsplit(pg_dsn)
    q = parse_qs(u.query)
    secrets = boto3.client("secretsmanager", endpoint_url=moto_url, region_name=REGION)
    arn = secrets.create_secret(Name=f"sysmon-db-{uuid.uuid4().hex[:6]}", SecretString=json.dumps({
        "username": u.username or "postgres", "password": "not-checked-by-trust-auth", "host": q["host"][0],
        "port": int(q.get("port", ["5432"])[0]), "dbname": u.path.lstrip("/"), "engine": "postgres"}))["ARN"]
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", moto_url)
    monkeypatch.delenv("SYSMON_POSTGRES_URL", raising=False)
    monkeypatch.setenv("SYSMON_POSTGRES_SECRET", arn)
    monkeypatch.setenv("SYSMON_POSTGRES_SSLMODE", "disable")
    lambda_handler.reset()
    events = recorded_events(["node-a"], frames=4, per_batch=4)
    try:
        response = await asyncio.to_thread(lambda_handler.handler, sqs_event([wire.encode(events)]), LambdaContext())
    finally:
        await asyncio.to_thread(lambda_handler.reset)
    assert response == {"batchItemFailures": []}
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("SELECT sum(count) FROM pipeline_rollup_1m") == sum(
            len(f.values) for ev in events for f in ev.frames)
    finally:
        await conn.close()


class FaultyEndpoint:
    """An HTTP/1.1 proxy to the SQS endpoint that answers the next requests with the given failures
    (status, JSON body), as SQS answers when it throttles or fails, and passes the rest through."""

    def __init__(self, target: str):
        self.target_host, port = target.removeprefix("http://").rsplit(":", 1)
        self.target_port = int(port)
        self.failures: list[tuple[int, dict[str, str]]] = []
        self.answered: list[int] = []
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @staticmethod
    async def _read_message(r: asyncio.StreamReader) -> bytes:
        head = await r.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        return head + (await r.readexactly(length) if length else b"")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(self.target_host, self.target_port)
        try:
            while True:
                request = await self._read_message(reader)
                if self.failures:
                    status, body = self.failures.pop(0)
                    data = json.dumps(body).encode()
                    writer.write(f"HTTP/1.1 {status} Error\r\nContent-Type: application/x-amz-json-1.0\r\n"
                                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
                    self.answered.append(status)
                else:
                    up_w.write(request)
                    writer.write(await self._read_message(up_r))
                    self.answered.append(200)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            up_w.close()
            writer.close()


async def test_throttling_and_server_errors_are_retried_with_backoff_until_accepted(
    sqs: Any, moto_url: str, redis_url: str, redis_client: aioredis.Redis, lambda_db: asyncpg.Connection,
) -> None:
    queue, _ = make_queues(sqs)
    endpoint = FaultyEndpoint(moto_url)
    await endpoint.start()
    throttled = (400, {"__type": "com.amazonaws.sqs#RequestThrottled", "message": "Rate exceeded"})
    unavailable = (503, {"__type": "com.amazonaws.sqs#ServiceUnavailable", "message": "try again"})
    endpoint.failures = [throttled, unavailable, throttled]
    bus = busmod.RedisBus(redis_client)
    events = recorded_events(["node-a"], frames=12, per_batch=4)

    def failed(reason: str) -> float:
        return REGISTRY.get_sample_value("sysmon_exporter_sqs_failed_messages_total", {"reason": reason}) or 0.0

    before = {r: failed(r) for r in ("throttled", "server")}
    try:
        async with exporting(exporter_settings(queue, endpoint.url), redis_url) as exporter:
            for ev in events:
                await bus.publish(busmod.SAMPLES, events_pb2.SamplesEvents(events=[ev]).SerializeToString())
            await wait_for(lambda: forwarded(redis_client, "sqs-exporter"), message="every batch sent")
    finally:
        await endpoint.stop()
    assert endpoint.answered[:3] == [400, 503, 400]
    assert exporter.failures == 3
    assert failed("throttled") > before["throttled"]
    assert failed("server") > before["server"]
    responses = await asyncio.to_thread(poll_like_lambda, sqs, queue, lambda_handler.handler)
    assert all(r == {"batchItemFailures": []} for r in responses)
    rows = {(s, int(b.timestamp() * 1000)): v
            for (s, b), v in (await host_rows(lambda_db, "pipeline_rollup_1m")).items()}
    assert rows == {k: (m.min, m.max, m.sum, m.count) for k, m in minutes(events).items()}


async def test_a_reader_that_subscribes_again_sends_nothing_twice(
    sqs: Any, moto_url: str, redis_url: str, redis_client: aioredis.Redis,
) -> None:
    """Redis drops the exporter's connections while its batches wait for SQS: subscribing again hands
    it its pending entries once more, and it still sends each batch once."""
    queue, _ = make_queues(sqs)
    endpoint = FaultyEndpoint(moto_url)
    await endpoint.start()
    endpoint.failures = [(503, {"__type": "com.amazonaws.sqs#ServiceUnavailable", "message": "later"})] * 3
    events = recorded_events(["node-a", "node-b"], frames=12, per_batch=4)
    bus = busmod.RedisBus(redis_client)
    try:
        async with exporting(exporter_settings(queue, endpoint.url), redis_url) as exporter:
            for ev in events:
                await bus.publish(busmod.SAMPLES, events_pb2.SamplesEvents(events=[ev]).SerializeToString())
            await wait_for(lambda: exporter.failures >= 1, message="a failed send")
            await redis_client.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
            await wait_for(lambda: forwarded(redis_client, "sqs-exporter"), message="every batch sent")
    finally:
        await endpoint.stop()
    assert exporter.sent_samples == sum(len(f.values) for ev in events for f in ev.frames)
    received = 0
    while got := sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, MessageAttributeNames=["All"]).get(
            "Messages", []):
        for m in got:
            received += sum(len(f.values) for ev in wire.decode(m["Body"], m["MessageAttributes"]).events
                            for f in ev.frames)
    assert received == exporter.sent_samples


async def test_sysmon_export_sqs_runs_until_signalled(sqs: Any, moto_url: str, redis_url: str,
                                                      redis_client: aioredis.Redis) -> None:
    queue, _ = make_queues(sqs)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYSMON_")} | {
        "SYSMON_REDIS_URL": redis_url, "SYSMON_METRICS_LISTEN": f"127.0.0.1:{port}"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sysmon", "export", "sqs", "--queue-url", queue, "--endpoint-url", moto_url,
        "--region", REGION, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        bus = busmod.RedisBus(redis_client)
        events = recorded_events(["node-a"], frames=8, per_batch=4)
        for ev in events:
            await bus.publish(busmod.SAMPLES, events_pb2.SamplesEvents(events=[ev]).SerializeToString())

        def sent() -> float:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    return _metric(r.read().decode(), "sysmon_exporter_sqs_sent_samples_total")
            except OSError:
                return 0.0

        total = sum(len(f.values) for ev in events for f in ev.frames)
        await wait_for(lambda: sent() == total, within=30, message="the CLI's exporter forwarding every sample")
    finally:
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0, err.decode()[-2000:]


async def test_the_exporter_a_fleet_asks_for_runs_from_the_operators_manifests(
    sqs: Any, moto_url: str, redis_url: str, redis_client: aioredis.Redis, tmp_path: Path,
) -> None:
    """`sysmon export sqs` started as the fleet's Deployment starts it: the container's args, its
    ConfigMap, and each Secret's value under the name its secretKeyRef gives. Its probe's /metrics
    answers, and what the bus carries reaches the queue."""
    from sysmon.core.embedded import free_port as loopback_port
    from sysmon.operator import manifests
    from sysmon.operator.fleet_spec import FleetSpec

    queue, _ = make_queues(sqs)

    def ref(name: str, key: str) -> dict[str, Any]:
        return {"secretKeyRef": {"name": name, "key": key}}

    spec = FleetSpec.model_validate({
        "postgres": ref("sysmon-postgres", "url"), "redis": ref("sysmon-redis", "url"),
        "token": ref("sysmon-token", "token"),
        "exporters": {"sqs": {"queueUrl": queue, "endpointUrl": moto_url, "region": REGION, "linger": "100ms",
                              "credentialsSecret": {"name": "sysmon-aws", "accessKeyIdKey": "id",
                                                    "secretAccessKeyKey": "secret"}}},
    })
    children = {manifests.key(c): c for c in manifests.desired_children(manifests.Fleet("prod", "sysmon", "u", spec))}
    (container,) = children["Deployment", "prod-sqs-exporter"]["spec"]["template"]["spec"]["containers"]
    secrets = {("sysmon-redis", "url"): redis_url, ("sysmon-aws", "id"): "testing", ("sysmon-aws", "secret"): "testing"}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYSMON_", "AWS_"))}
    env.update(children["ConfigMap", "prod-sqs-exporter"]["data"])
    for e in container["env"]:
        r = e["valueFrom"]["secretKeyRef"]
        env[e["name"]] = secrets[r["name"], r["key"]]
    probe = container["readinessProbe"]["httpGet"]
    # In the pod it listens on every address at the probe's port; here on a free loopback port.
    assert env["SYSMON_METRICS_LISTEN"] == f"0.0.0.0:{probe['port']}"
    port = loopback_port()
    env["SYSMON_METRICS_LISTEN"] = f"127.0.0.1:{port}"

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{probe['path']}", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    events = recorded_events(["node-a", "node-b"], frames=8, per_batch=4)
    bus = busmod.RedisBus(redis_client)
    with (tmp_path / "exporter.log").open("w") as log:
        proc = await asyncio.create_subprocess_exec(str(Path(sys.executable).parent / "sysmon"), *container["args"],
                                                    env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            await wait_for(ready, within=30, message="the readiness probe's /metrics")
            for ev in events:
                await bus.publish(busmod.SAMPLES, events_pb2.SamplesEvents(events=[ev]).SerializeToString())
            await wait_for(lambda: forwarded(redis_client, env["SYSMON_CONSUMER_GROUP"]), within=30,
                           message="every bus entry sent and acknowledged")
        finally:
            if proc.returncode is None:
                proc.terminate()
            await asyncio.wait_for(proc.wait(), 15)
    assert proc.returncode == 0, (tmp_path / "exporter.log").read_text()

    got: set[tuple[str, int]] = set()
    while True:
        messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, MessageAttributeNames=["All"],
                                       WaitTimeSeconds=0).get("Messages", [])
        if not messages:
            break
        for msg in messages:
            got |= {(ev.host_id, ev.seq) for ev in wire.decode(msg["Body"], msg["MessageAttributes"]).events}
        sqs.delete_message_batch(QueueUrl=queue, Entries=[{"Id": str(i), "ReceiptHandle": msg["ReceiptHandle"]}
                                                          for i, msg in enumerate(messages)])
    assert got == {(ev.host_id, ev.seq) for ev in events}
