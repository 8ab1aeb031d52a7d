"""ControlService: one bidirectional stream per collector session, and the hub that routes to it.

Acknowledgements, retry requests and rejections produced anywhere in the aggregator, and
commands arriving on the bus, reach a collector through its session's outbox. A collector
without an open control stream loses nothing by missing an ack: it sends the batch again after
its ack timeout and storage recognises the duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import grpc

from sysmon.aggregator import auth, telemetry
from sysmon.aggregator.storage import CONNECTION_ERRORS, Storage
from sysmon.core import bus as busmod
from sysmon.core.identity import Principal
from sysmon.core.metrics import InvalidInput, Limits, check_host_id, check_session_id
from sysmon.pb.v1 import control_pb2, control_pb2_grpc, events_pb2

log = logging.getLogger(__name__)

BatchKey = tuple[str, str, int]
OUTBOX = 10_000
# Liveness is gRPC keepalive's job (pings every 15 s from collectors, every 30 s from here); a
# heartbeat reports the collector's buffer, which is worth a message a minute, not more: at a thousand
# collectors a heartbeat every 10 s was a hundred messages a second.
HEARTBEAT_MS = 60_000
# A session whose stream is taken over this often in a minute has two clients claiming it.
CONTESTED_REPLACEMENTS = 3


@dataclass
class Peer:
    host_id: str
    session_id: str
    hello: control_pb2.Hello
    # What is to be sent on this collector's stream. A deque and an event rather than a Queue: the
    # stream's loop waits on one event (no task per message), and acks waiting behind each other go
    # out as one message.
    outbox: deque[control_pb2.AggregatorMessage] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # The stream is to end: its collector stopped reading, or a newer stream took the session over.
    ending: bool = False
    replaced_by: str = ""
    last_heartbeat: control_pb2.Heartbeat | None = None
    dropped: int = 0

    def send(self, msg: control_pb2.AggregatorMessage) -> None:
        if len(self.outbox) >= OUTBOX:
            self.dropped += 1  # the collector's ack timeout recovers a lost ack
            return
        self.outbox.append(msg)
        self.wake.set()

    def end(self, replaced_by: str = "") -> None:
        self.replaced_by = replaced_by
        self.ending = True
        self.wake.set()

    def take(self) -> control_pb2.AggregatorMessage:
        """The next message to send; acks queued one behind another merged into it."""
        msg = self.outbox.popleft()
        if msg.HasField("ack"):
            while self.outbox and self.outbox[0].HasField("ack"):
                msg.ack.seqs.extend(self.outbox.popleft().ack.seqs)
        return msg


class ControlHub:
    """Implements the ingest AckSink and routes commands to collectors connected here."""

    def __init__(self) -> None:
        self.peers: dict[tuple[str, str], Peer] = {}
        self.results: dict[str, control_pb2.CommandResult] = {}
        # One future per waiter: a waiter that gives up cancels only its own.
        self._result_waiters: dict[str, set[asyncio.Future[control_pb2.CommandResult]]] = defaultdict(set)

    def _grouped(self, keys: Sequence[BatchKey]) -> dict[tuple[str, str], list[int]]:
        out: dict[tuple[str, str], list[int]] = defaultdict(list)
        for h, s, q in keys:
            out[(h, s)].append(q)
        return out

    def ack(self, keys: Sequence[BatchKey]) -> None:
        for sess, seqs in self._grouped(keys).items():
            peer = self.peers.get(sess)
            if peer is not None:
                peer.send(control_pb2.AggregatorMessage(ack=control_pb2.Ack(seqs=seqs)))

    def nack(self, keys: Sequence[BatchKey], retry_after_ms: int, reason: str,
             code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        for sess, seqs in self._grouped(keys).items():
            peer = self.peers.get(sess)
            if peer is not None:
                peer.send(control_pb2.AggregatorMessage(
                    nack=control_pb2.Nack(seqs=seqs, retry_after_ms=retry_after_ms, reason=reason,
                                          code=code.value[0])
                ))

    def reject(self, host_id: str, session_id: str, seq: int, code: grpc.StatusCode, message: str) -> None:
        peer = self.peers.get((host_id, session_id))
        if peer is not None:
            peer.send(control_pb2.AggregatorMessage(
                reject=control_pb2.Reject(seq=seq, code=code.value[0], message=message)
            ))

    def command(self, host_id: str, cmd: control_pb2.Command) -> bool:
        """Deliver to every session of the host connected here; False when none is."""
        delivered = False
        for (h, _), peer in list(self.peers.items()):
            if h == host_id:
                peer.send(control_pb2.AggregatorMessage(command=cmd))
                delivered = True
        return delivered

    async def wait_result(self, command_id: str) -> control_pb2.CommandResult:
        """The collector's answer to a command; the caller bounds the wait."""
        if command_id in self.results:
            return self.results[command_id]
        fut: asyncio.Future[control_pb2.CommandResult] = asyncio.get_running_loop().create_future()
        self._result_waiters[command_id].add(fut)
        try:
            return await fut
        finally:
            waiters = self._result_waiters.get(command_id)
            if waiters is not None:
                waiters.discard(fut)
                if not waiters:
                    del self._result_waiters[command_id]

    def _result(self, res: control_pb2.CommandResult) -> None:
        self.results[res.command_id] = res
        if len(self.results) > 1000:
            self.results.pop(next(iter(self.results)))
        for fut in self._result_waiters.pop(res.command_id, set()):
            if not fut.done():
                fut.set_result(res)


def new_command(**action) -> control_pb2.Command:
    return control_pb2.Command(command_id=uuid.uuid4().hex, **action)


class ControlServicer(control_pb2_grpc.ControlServiceServicer):
    def __init__(self, hub: ControlHub, storage: Storage, bus: busmod.Bus | None, limits: Limits,
                 aggregator_id: str, on_session_end: Callable[[str, str], None] | None = None,
                 on_identity: Callable[[Principal, str], None] | None = None):
        self.hub = hub
        self.storage = storage
        self.bus = bus
        self.limits = limits
        self.aggregator_id = aggregator_id
        self.on_session_end = on_session_end
        self.on_identity = on_identity
        self._replacements: dict[tuple[str, str], list[float]] = defaultdict(list)

    async def Connect(
        self, request_iterator: AsyncIterator[control_pb2.AgentMessage], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[control_pb2.AggregatorMessage]:
        try:
            first = auth.checked(await anext(request_iterator), context)
        except StopAsyncIteration:
            return
        if first.WhichOneof("body") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message on Connect must be a Hello")
        hello = first.hello
        try:
            check_host_id(hello.host_id, self.limits)
            check_session_id(hello.session_id, self.limits)
            lim = self.limits
            if len(hello.labels) > lim.max_host_labels:
                raise InvalidInput("labels", f"{len(hello.labels)} labels, more than {lim.max_host_labels}")
            for k, v in hello.labels.items():
                if not k or len(k) > lim.max_label_key_length or len(v) > lim.max_label_value_length:
                    raise InvalidInput("labels", f"label {k[:70]!r}: keys 1-{lim.max_label_key_length} and "
                                                 f"values 0-{lim.max_label_value_length} characters")
            for name, value, most in (("hostname", hello.hostname, lim.max_hostname_length),
                                      ("agent_version", hello.agent_version, lim.max_agent_version_length),
                                      ("os", hello.os, lim.max_os_length)):
                if len(value) > most:
                    raise InvalidInput(name, f"longer than {most} characters")
        except InvalidInput as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"hello: {e}")
        principal = auth.current()
        if not principal.may_speak_for(hello.host_id):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"hello: this credential ({principal.subject}) may not speak for host {hello.host_id!r}")
        if self.on_identity is not None:
            self.on_identity(principal, hello.host_id)
        peer = Peer(hello.host_id, hello.session_id, hello)
        key = (hello.host_id, hello.session_id)
        previous = self.hub.peers.get(key)
        self.hub.peers[key] = peer
        telemetry.COLLECTORS.set(len(self.hub.peers))
        log.info("collector %s connected (labels %s)", hello.host_id, dict(hello.labels))
        if previous is not None:
            self._replace(previous, key, context.peer())
        reader = asyncio.create_task(self._read(request_iterator, peer, context))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._register(hello), timeout=5)
        await self._publish_host(hello, events_pb2.HOST_STATE_UP)
        try:
            yield control_pb2.AggregatorMessage(welcome=control_pb2.Welcome(
                aggregator_id=self.aggregator_id, heartbeat_interval_ms=HEARTBEAT_MS))
            while not peer.ending:
                if peer.outbox:
                    yield peer.take()
                else:
                    peer.wake.clear()
                    await peer.wake.wait()
            if reader.done() and not reader.cancelled() and reader.exception() is not None:
                raise reader.exception()  # type: ignore[misc]  # a malformed message: the interceptor answers it
            if peer.replaced_by:
                # The collector holding this stream reconnects; if it is the rightful one, it takes the
                # session back, and with a credential bound to its host an intruder cannot take it at all.
                await context.abort(grpc.StatusCode.ABORTED,
                                    f"this control stream was replaced by a newer one for its session "
                                    f"(from {peer.replaced_by}); reconnect")
        finally:
            # The RPC may be cancelled while it waits (server shutdown): its reader may not outlive it.
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            if self.hub.peers.get(key) is peer:
                del self.hub.peers[key]
                telemetry.COLLECTORS.set(len(self.hub.peers))
                await self._publish_host(hello, events_pb2.HOST_STATE_DOWN)
                if self.on_session_end is not None:
                    self.on_session_end(*key)
            log.info("collector %s disconnected", hello.host_id)

    def _replace(self, previous: Peer, key: tuple[str, str], by: str) -> None:
        previous.end(replaced_by=by)
        telemetry.STREAMS_REPLACED.inc()
        now = time.monotonic()
        if len(self._replacements) > 10_000:
            self._replacements = defaultdict(list, {k: v for k, v in self._replacements.items() if now - v[-1] < 60})
        recent = [t for t in self._replacements[key] if now - t < 60.0] + [now]
        self._replacements[key] = recent
        if len(recent) >= CONTESTED_REPLACEMENTS:
            log.warning("the control stream of collector %s was taken over %d times in a minute: two clients "
                        "claim one session (a leaked fleet-wide token?); latest from %s", key[0], len(recent), by)
        else:
            log.info("collector %s reconnected from %s; the older control stream is closed", key[0], by)

    async def _read(self, it: AsyncIterator[control_pb2.AgentMessage], peer: Peer,
                    context: grpc.aio.ServicerContext) -> None:
        # MalformedRequest passes: Connect re-raises it for the interceptor to answer.
        try:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
                async for msg in it:
                    kind = auth.checked(msg, context).WhichOneof("body")
                    if kind == "heartbeat":
                        peer.last_heartbeat = msg.heartbeat
                    elif kind == "command_result":
                        self.hub._result(msg.command_result)
        finally:
            peer.end(peer.replaced_by)

    async def _register(self, hello: control_pb2.Hello) -> None:
        """Record the host (labels, facts) in PostgreSQL when it is there."""
        if not self.storage.ready.is_set() or self.storage.pool is None:
            return
        try:
            await self.storage.pool.execute(
                """
                INSERT INTO hosts (host_id, hostname, labels, agent_version, os, cpu_count, memory_total_bytes,
                                   boot_time, interval_ms, last_seen)
                VALUES ($1, $2, $3, $4, $5, $6, $7, to_timestamp($8 / 1000.0), $9, now())
                ON CONFLICT (host_id) DO UPDATE SET
                    hostname = EXCLUDED.hostname, labels = EXCLUDED.labels,
                    agent_version = EXCLUDED.agent_version, os = EXCLUDED.os, cpu_count = EXCLUDED.cpu_count,
                    memory_total_bytes = EXCLUDED.memory_total_bytes, boot_time = EXCLUDED.boot_time,
                    interval_ms = EXCLUDED.interval_ms, last_seen = now()
                """,
                hello.host_id, hello.hostname, dict(hello.labels), hello.agent_version, hello.os,
                hello.cpu_count or None, hello.memory_total_bytes or None, hello.boot_time_unix_ms or None,
                hello.interval_ms or None,
            )
        except CONNECTION_ERRORS as e:
            log.warning("host %s not recorded: %s", hello.host_id, e)

    async def _publish_host(self, hello: control_pb2.Hello, state: int) -> None:
        if self.bus is None:
            return
        ev = events_pb2.HostEvent(host_id=hello.host_id, state=state, time_unix_ms=time.time_ns() // 1_000_000,
                                  labels=dict(hello.labels))
        try:
            await self.bus.publish(busmod.HOSTS, ev.SerializeToString(), key=hello.host_id)
        except Exception as e:
            log.debug("host event not published: %s", e)


async def route_commands(hub: ControlHub, bus: busmod.Bus, stop: asyncio.Event) -> None:
    """Deliver commands published on the bus to collectors connected to this aggregator."""
    while not stop.is_set():
        try:
            async for msg in bus.subscribe(busmod.COMMANDS):
                ev = events_pb2.CommandEvent.FromString(msg.payload)
                if hub.command(ev.host_id, ev.command):
                    log.info("command %s routed to %s", ev.command.command_id, ev.host_id)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.debug("command routing paused: %s", e)
            await asyncio.sleep(1.0)

