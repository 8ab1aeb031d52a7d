"""Test helpers: waiting on conditions with a deadline, running collectors."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from sysmon.agent.collector import Collector
from sysmon.core.settings import AgentSettings


async def wait_for(predicate: Callable[[], Any], within: float = 20.0, interval: float = 0.05,
                   message: str = "condition") -> Any:
    """Poll `predicate` (sync or async) until truthy; fail with `message` at the deadline."""
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {message}")
        await asyncio.sleep(interval)


def storage_job_runs(job: str) -> float:
    """How many runs of an aggregator's storage job this process saw (ok or not)."""
    from prometheus_client import REGISTRY

    return sum(REGISTRY.get_sample_value("sysmon_aggregator_storage_job_runs_total", {"job": job, "outcome": o})
               or 0.0 for o in ("ok", "error"))


async def start_idle_aggregator(start_aggregator: Callable[..., Awaitable[Any]], **overrides: Any) -> Any:
    """An aggregator whose own maintenance loop has done its first round (sealing is a round's last
    job) and now waits for its next (an hour away in the tests), so that its advisory locks are free
    and the test alone decides when the storage jobs run."""
    before = storage_job_runs("sealing")
    agg = await start_aggregator(**overrides)
    await wait_for(lambda: storage_job_runs("sealing") > before, message="the aggregator's first maintenance round")
    return agg


@contextlib.asynccontextmanager
async def running_collector(aggregator: str, **settings: Any) -> AsyncIterator[Collector]:
    fields: dict[str, Any] = {"aggregator": aggregator, "interval": "200ms", "host_id": "test-host",
                              "max_backoff": "1s"}
    fields.update(settings)
    collector = Collector(AgentSettings(**fields))
    stop = asyncio.Event()
    task = asyncio.create_task(collector.run(stop))
    try:
        yield collector
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


class RawClient:
    """A hand-driven collector over real gRPC: send any batch, read what comes back."""

    def __init__(self, address: str, host_id: str = "raw-host", session_id: str = "s1",
                 token: str | None = None):
        import grpc

        from sysmon.pb.v1 import control_pb2_grpc, metrics_pb2_grpc

        self.host_id = host_id
        self.session_id = session_id
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.channel = grpc.aio.insecure_channel(address)
        self.control_stub = control_pb2_grpc.ControlServiceStub(self.channel)
        self.metrics_stub = metrics_pb2_grpc.MetricsServiceStub(self.channel)
        self._out: asyncio.Queue[Any] = asyncio.Queue()
        self.control: Any = None
        self.push: Any = None
        self.acked: set[int] = set()
        self.rejects: dict[int, Any] = {}
        self.nacks: list[Any] = []
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RawClient:
        from sysmon.pb.v1 import control_pb2

        self.control = self.control_stub.Connect(metadata=self.metadata)
        await self.control.write(control_pb2.AgentMessage(
            hello=control_pb2.Hello(host_id=self.host_id, session_id=self.session_id)))
        welcome = await self.control.read()
        assert welcome.WhichOneof("body") == "welcome"
        self._reader = asyncio.create_task(self._read())
        self.push = self.metrics_stub.Push(self._requests(), metadata=self.metadata)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader:
            self._reader.cancel()
        self.push.cancel()
        self.control.cancel()
        await self.channel.close()

    async def _requests(self) -> AsyncIterator[Any]:
        while (item := await self._out.get()) is not None:
            yield item

    async def _read(self) -> None:
        import grpc

        while (msg := await self.control.read()) is not grpc.aio.EOF:
            kind = msg.WhichOneof("body")
            if kind == "ack":
                self.acked.update(msg.ack.seqs)
            elif kind == "reject":
                self.rejects[msg.reject.seq] = msg.reject
            elif kind == "nack":
                self.nacks.append(msg.nack)

    def send(self, batch: Any) -> None:
        self._out.put_nowait(batch)

    async def finish(self) -> Any:
        """Close the Push stream and return the PushSummary."""
        self._out.put_nowait(None)
        return await self.push


def make_batch(host_id: str, session_id: str, seq: int, *, declare: bool = True, time_ms: int | None = None,
               values: tuple[float, ...] = (0.5, 1.5), name: str = "system.cpu.utilization",
               attributes: dict[str, str] | None = None) -> Any:
    """A MetricBatch of one frame over series refs 1..len(values)."""
    from sysmon.pb.v1 import metrics_pb2

    t = time_ms if time_ms is not None else time.time_ns() // 1_000_000
    batch = metrics_pb2.MetricBatch(host_id=host_id, session_id=session_id, seq=seq)
    if declare:
        for i in range(len(values)):
            attrs = {"cpu": str(i), "state": "user"} if attributes is None else attributes
            batch.series.add(ref=i + 1, name=name, attributes=attrs, unit="1", kind=1)
    batch.frames.add(time_unix_ms=t, refs=list(range(1, len(values) + 1)), values=list(values))
    return batch


class TcpProxy:
    """One address in front of several backends, as a Kubernetes Service is: each new connection
    goes to the next backend in turn, skipping one that refuses. `stop()` takes the address away,
    and `start()` brings it back on the same port."""

    def __init__(self, *targets: str):
        from sysmon.core.embedded import free_port

        self.targets = [(h, int(p)) for h, _, p in (t.removeprefix("http://").rpartition(":") for t in targets)]
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        # Connections each backend took, by its index in targets.
        self.taken: list[int] = [0] * len(self.targets)
        self._next = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self.writers):
            w.transport.abort()
        await self.server.wait_closed()
        self.server = None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        for _ in self.targets:
            i = self._next
            self._next = (self._next + 1) % len(self.targets)
            try:
                up = await asyncio.open_connection(*self.targets[i])
            except OSError:
                continue
            self.taken[i] += 1
            return up
        return None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up = await self._connect()
        if up is None:
            writer.transport.abort()
            return
        up_r, up_w = up
        self.writers |= {writer, up_w}

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            w.transport.abort()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
        self.writers -= {writer, up_w}


async def aggregator_serving(address: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(address) as ch:
        try:
            resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.aio.AioRpcError:
            return False
        return resp.status == health_pb2.HealthCheckResponse.SERVING


def start_aggregator_process(address: str, pg_dsn: str, redis_url: str) -> Any:
    """`sysmon aggregator` as its own process on `address`, for tests that kill it."""
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "SYSMON_POSTGRES_URL": pg_dsn,
        "SYSMON_REDIS_URL": redis_url,
        "SYSMON_LISTEN": address,
        "SYSMON_METRICS_LISTEN": "",
        "SYSMON_LOG_LEVEL": "warning",
    }
    return subprocess.Popen([sys.executable, "-m", "sysmon", "aggregator"], env=env)
