"""The collector: samples on an interval, streams batches, obeys commands, follows config.

Three client streams share one channel: MetricsService.Push (batches out), ControlService
.Connect (hello and heartbeats out; acks, retry requests, rejections and commands in) and
ConfigService.Watch (configuration in). Sampling never waits for the network: batches go into
the unacknowledged buffer and the sender drains it whenever a connection is up. When the
connection fails, the collector reconnects with exponential backoff and jitter and sends the
buffer again, oldest first, with the original timestamps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import psutil
from pydantic import ValidationError

from sysmon.agent.buffer import UnackedBuffer
from sysmon.agent.sampler import Sampler, SeriesSpec
from sysmon.core.backoff import Backoff, wait_any, wait_or_stop
from sysmon.core.client import call_metadata, open_channel
from sysmon.core.config_model import CollectorConfigSpec, spec_from_struct
from sysmon.core.settings import AgentSettings
from sysmon.pb.v1 import (
    config_pb2,
    config_pb2_grpc,
    control_pb2,
    control_pb2_grpc,
    metrics_pb2,
    metrics_pb2_grpc,
)

log = logging.getLogger(__name__)

VERSION = "0.1.0"
HELLO_TIMEOUT = 10.0
# Rates (CPU utilization, I/O) need two readings: the first sample waits this long after the
# priming reading, so that the collector's first batch, after a restart too, carries them all.
PRIME_S = 1.0
NACK_LOG_EVERY_S = 30.0


class _Restart(Exception):
    """Configuration changed what the Hello says: open a new session at once."""


@dataclass
class CollectorStats:
    batches: int = 0
    samples: int = 0
    connects: int = 0
    failures: int = 0


class Collector:
    def __init__(self, settings: AgentSettings, sampler: Sampler | None = None):
        self.settings = settings
        self.sampler = sampler or Sampler(settings.metric_groups, host_root=settings.host_root)
        self.session_id = uuid.uuid4().hex
        self.buffer = UnackedBuffer(settings.buffer_batches)
        self.stats = CollectorStats()
        self.interval = settings.interval.total_seconds()
        self.labels = dict(settings.labels)
        self.paused = False
        self.connected = asyncio.Event()
        self.config_version = 0
        self._seq = 0
        self._refs: dict[SeriesSpec, int] = {}
        self._defs: dict[int, metrics_pb2.SeriesDef] = {}
        self._sent_more = asyncio.Event()  # wakes the sender
        self._tick_now = asyncio.Event()  # wakes the sampler (interval changed)
        self._emptied = asyncio.Event()  # every batch so far acknowledged
        self._backoff = Backoff(initial=0.5, maximum=settings.max_backoff.total_seconds())
        self._metadata: tuple[tuple[str, str], ...] = ()
        self._nacks_unlogged: dict[str, int] = {}
        self._nack_logged_at = -NACK_LOG_EVERY_S

    # --- sampling -------------------------------------------------------------------------------

    def _ref(self, spec: SeriesSpec) -> int:
        ref = self._refs.get(spec)
        if ref is None:
            ref = len(self._refs) + 1
            self._refs[spec] = ref
            self._defs[ref] = metrics_pb2.SeriesDef(
                ref=ref, name=spec.name, attributes=dict(spec.attributes), unit=spec.unit, kind=spec.kind
            )
        return ref

    def collect_once(self) -> int:
        """Take one sample into the buffer; returns the number of samples."""
        points = self.sampler.sample()
        if not points:
            return 0
        frame = metrics_pb2.Frame(
            time_unix_ms=time.time_ns() // 1_000_000,
            refs=[self._ref(spec) for spec, _ in points],
            values=[v for _, v in points],
        )
        self._seq += 1
        self.buffer.add(self._seq, frame)
        self._emptied.clear()
        self.stats.batches += 1
        self.stats.samples += len(points)
        self._sent_more.set()
        return len(points)

    async def _sample_loop(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        self.sampler.sample()  # the base readings of every rate; this tick yields no batch
        next_at = loop.time() + min(self.interval, PRIME_S)
        if await wait_or_stop(stop, next_at - loop.time()):
            return
        while not stop.is_set():
            if not self.paused:
                self.collect_once()
            next_at += self.interval
            now = loop.time()
            if next_at < now:  # fell behind (suspend, overload): skip, do not burst
                next_at = now + self.interval
            self._tick_now.clear()
            await wait_any(stop, self._tick_now, seconds=next_at - now)
            if self._tick_now.is_set():
                next_at = loop.time()

    # --- connection -------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        sampler = asyncio.create_task(self._sample_loop(stop), name="sample")
        try:
            await self._connection_loop(stop)
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler

    async def _connection_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            channel = open_channel(self.settings)
            hint: float | None = None
            try:
                await self._session(channel, stop)
            except _Restart:
                continue
            except grpc.aio.AioRpcError as e:
                self.stats.failures += 1
                level = logging.ERROR if e.code() in (grpc.StatusCode.UNAUTHENTICATED,
                                                      grpc.StatusCode.PERMISSION_DENIED,
                                                      grpc.StatusCode.INVALID_ARGUMENT) else logging.WARNING
                log.log(level, "connection to %s failed: %s %s", self.settings.aggregator, e.code().name,
                        e.details())
            except (OSError, TimeoutError) as e:
                self.stats.failures += 1
                log.warning("connection to %s failed: %s", self.settings.aggregator, e)
            except Exception:
                # A collector must outlive its own bugs: log loudly, reconnect, keep sampling.
                self.stats.failures += 1
                log.exception("session with %s ended by an unexpected error", self.settings.aggregator)
            finally:
                self.connected.clear()
                self.buffer.unsend_all()
                with contextlib.suppress(Exception):
                    await channel.close(grace=None)
            if stop.is_set():
                break
            delay = self._backoff.next_delay(hint)
            log.info("reconnecting in %.1fs (%d batches buffered, %d dropped)", delay, len(self.buffer),
                     self.buffer.dropped)
            await wait_or_stop(stop, delay)

    async def _session(self, channel: grpc.aio.Channel, stop: asyncio.Event) -> None:
        # Read for every session: a token file (a projected ServiceAccount token) is rotated.
        self._metadata = call_metadata(self.settings)
        control = control_pb2_grpc.ControlServiceStub(channel).Connect(metadata=self._metadata)
        await control.write(control_pb2.AgentMessage(hello=self._hello()))
        first = await asyncio.wait_for(control.read(), HELLO_TIMEOUT)
        if first is grpc.aio.EOF or first.WhichOneof("body") != "welcome":
            raise OSError("the aggregator did not answer the hello")
        self.connected.set()
        self.stats.connects += 1
        self._backoff.reset()
        heartbeat_ms = first.welcome.heartbeat_interval_ms or 10_000
        log.info("connected to %s (%s) as %s", self.settings.aggregator, first.welcome.aggregator_id,
                 self.settings.host_id)
        push = metrics_pb2_grpc.MetricsServiceStub(channel).Push(self._batches(), metadata=self._metadata)
        tasks = {
            asyncio.create_task(self._await_push(push), name="push"),
            asyncio.create_task(self._read_control(control), name="control"),
            asyncio.create_task(self._heartbeats(control, heartbeat_ms / 1000), name="heartbeat"),
            asyncio.create_task(self._watch(channel, stop), name="watch"),
            asyncio.create_task(stop.wait(), name="stop"),
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t.get_name() != "stop" and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
            if stop.is_set():
                # On shutdown, give in-flight batches a moment to be acknowledged.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2.0):
                        await self._emptied.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            push.cancel()
            control.cancel()

    def _hello(self) -> control_pb2.Hello:
        return control_pb2.Hello(
            host_id=self.settings.host_id,
            session_id=self.session_id,
            hostname=socket.gethostname(),
            labels=self.labels,
            agent_version=VERSION,
            interval_ms=int(self.interval * 1000),
            os=f"{platform.system()} {platform.release()}",
            cpu_count=psutil.cpu_count() or 0,
            memory_total_bytes=psutil.virtual_memory().total,
            boot_time_unix_ms=int(psutil.boot_time() * 1000),
        )

    async def _batches(self) -> AsyncIterator[metrics_pb2.MetricBatch]:
        declared: set[int] = set()  # refs are declared once per stream
        ack_timeout = self.settings.ack_timeout.total_seconds()
        while True:
            self._sent_more.clear()
            due = self.buffer.due(time.monotonic(), ack_timeout)
            for p in due:
                batch = metrics_pb2.MetricBatch(
                    host_id=self.settings.host_id, session_id=self.session_id, seq=p.seq, frames=[p.frame]
                )
                for ref in p.frame.refs:
                    if ref not in declared:
                        batch.series.append(self._defs[ref])
                        declared.add(ref)
                p.sent_at = time.monotonic()
                yield batch
            if due:
                continue
            deadline = self.buffer.next_deadline(ack_timeout)
            wait = 1.0 if deadline is None else min(1.0, max(0.0, deadline - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sent_more.wait(), timeout=wait)

    async def _await_push(self, push: grpc.aio.StreamUnaryCall) -> None:
        summary = await push
        raise OSError(f"the aggregator closed the Push stream ({summary.batches_received} batches)")

    async def _read_control(self, control: grpc.aio.StreamStreamCall) -> None:
        # read()/write() only: gRPC forbids mixing them with iteration on one call.
        while (msg := await control.read()) is not grpc.aio.EOF:
            kind = msg.WhichOneof("body")
            if kind == "ack":
                self.buffer.ack(msg.ack.seqs)
                if not len(self.buffer):
                    self._emptied.set()
            elif kind == "nack":
                self.buffer.nack(msg.nack.seqs, time.monotonic() + msg.nack.retry_after_ms / 1000)
                self._log_nack(msg.nack)
                self._sent_more.set()
            elif kind == "reject":
                if self.buffer.reject(msg.reject.seq):
                    log.error("batch %d rejected (%s): %s", msg.reject.seq, grpc.StatusCode(
                        _code(msg.reject.code)).name, msg.reject.message)
            elif kind == "command":
                result = self.apply_command(msg.command)
                await control.write(control_pb2.AgentMessage(command_result=result))
        raise OSError("the aggregator closed the control stream")

    def _log_nack(self, nack: control_pb2.Nack) -> None:
        """One line per reason every half minute, not one per batch: an outage of PostgreSQL
        sends every batch back, every few seconds, for as long as it lasts."""
        code = _code(nack.code).name if nack.code else "UNAVAILABLE"
        reason = f"{code}: {nack.reason}"
        self._nacks_unlogged[reason] = self._nacks_unlogged.get(reason, 0) + len(nack.seqs)
        now = time.monotonic()
        if now - self._nack_logged_at < NACK_LOG_EVERY_S:
            return
        self._nack_logged_at = now
        for why, n in self._nacks_unlogged.items():
            # Storage away is the aggregator's news to tell; being over budget is this collector's.
            level = logging.INFO if why.startswith("UNAVAILABLE") else logging.WARNING
            log.log(level, "the aggregator sent back %d batch(es) to resend later (%s); they stay buffered", n, why)
        self._nacks_unlogged.clear()

    def apply_command(self, cmd: control_pb2.Command) -> control_pb2.CommandResult:
        action = cmd.WhichOneof("action")
        if action == "set_interval":
            ms = cmd.set_interval.interval_ms
            if not 100 <= ms <= 3_600_000:
                return control_pb2.CommandResult(command_id=cmd.command_id, ok=False,
                                                 message=f"interval {ms} ms is outside 100 ms .. 1 h")
            self.interval = ms / 1000
            self._tick_now.set()
        elif action == "pause":
            self.paused = True
        elif action == "resume":
            self.paused = False
            self._tick_now.set()
        else:
            return control_pb2.CommandResult(command_id=cmd.command_id, ok=False,
                                             message=f"unknown command {action!r}")
        log.info("command %s applied: %s", cmd.command_id, action)
        return control_pb2.CommandResult(command_id=cmd.command_id, ok=True, message=action or "")

    async def _heartbeats(self, control: grpc.aio.StreamStreamCall, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            await control.write(control_pb2.AgentMessage(heartbeat=control_pb2.Heartbeat(
                time_unix_ms=time.time_ns() // 1_000_000,
                buffered_batches=len(self.buffer),
                dropped_batches=self.buffer.dropped,
                last_seq=self._seq,
                paused=self.paused,
                interval_ms=int(self.interval * 1000),
            )))

    async def _watch(self, channel: grpc.aio.Channel, stop: asyncio.Event) -> None:
        """Follow CollectorConfig; the Watch stream failing alone does not end the session."""
        stub = config_pb2_grpc.ConfigServiceStub(channel)
        retry = Backoff(initial=1.0, maximum=30.0)
        while not stop.is_set():
            try:
                req = config_pb2.WatchRequest(kinds=["CollectorConfig"], host_id=self.settings.host_id,
                                              labels=self.settings.labels)
                async for snap in stub.Watch(req, metadata=self._metadata):
                    retry.reset()
                    self.apply_config(snap)
            except grpc.aio.AioRpcError as e:
                log.debug("config watch interrupted: %s", e.code().name)
            await wait_or_stop(stop, retry.next_delay())

    def apply_config(self, snap: config_pb2.ConfigSnapshot) -> None:
        """Apply the CollectorConfig resources that select this host, merged in name order.

        Only the fields a resource sets override the command line; a field no resource sets
        (any more) returns to the command line's value.
        """
        interval = self.settings.interval.total_seconds()
        groups = list(self.settings.metric_groups)
        labels = dict(self.settings.labels)
        for r in snap.resources:
            if r.kind != "CollectorConfig":
                continue
            try:
                spec = CollectorConfigSpec.model_validate(spec_from_struct(r.spec))
            except ValidationError as e:
                log.error("ignoring CollectorConfig %s: %s", r.name, e)
                continue
            if "interval" in spec.model_fields_set:
                interval = spec.interval.total_seconds()
            if "metric_groups" in spec.model_fields_set:
                groups = spec.metric_groups
            labels.update(spec.labels)
        self.config_version = snap.version
        if interval != self.interval:
            log.info("interval %.3gs from configuration version %d", interval, snap.version)
            self.interval = interval
            self._tick_now.set()
        if frozenset(groups) != self.sampler.groups:
            self.sampler.set_groups(groups)
        if labels != self.labels:
            self.labels = labels
            raise _Restart()


def _code(value: int) -> grpc.StatusCode:
    return next((c for c in grpc.StatusCode if c.value[0] == value), grpc.StatusCode.UNKNOWN)


