"""Simulated collectors for the gateway benchmarks: hand-encoded batches (bench.ingest.Encoder) over
real gRPC to a real aggregator, either a day of history as fast as it is acknowledged, or one
frame per host per interval, stamped now."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from bench.ingest import CONNECT, PUSH, Encoder


@dataclass
class SimHost:
    host_id: str
    session_id: str
    prefix: bytes
    seq: int = 0
    declared: bool = False
    control: object = None
    push: object = None
    window: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(4))
    inflight: set[int] = field(default_factory=set)


class SimFleet:
    def __init__(self, address: str, hosts: int, series: int, *, run_id: str = "bench", prefix: str = "host"):
        self.address = address
        self.enc = Encoder(series)
        self.enc.check()
        self.hosts = [SimHost(f"{prefix}-{i:03d}", f"{run_id}-{i}", b"") for i in range(hosts)]
        for h in self.hosts:
            h.prefix = self.enc.prefix(h.host_id, h.session_id)
        self.channels: list[object] = []
        self.readers: list[asyncio.Task[None]] = []
        self.acked = 0
        self.rejected: list[str] = []

    async def open(self, hosts_per_channel: int = 25) -> None:
        import grpc

        from sysmon.pb.v1 import control_pb2, metrics_pb2

        opts = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_send_message_length", 64 << 20)]
        for k in range(0, len(self.hosts), hosts_per_channel):
            ch = grpc.aio.insecure_channel(self.address, options=opts)
            self.channels.append(ch)
            connect = ch.stream_stream(CONNECT, request_serializer=control_pb2.AgentMessage.SerializeToString,
                                       response_deserializer=control_pb2.AggregatorMessage.FromString)
            push = ch.stream_unary(PUSH, request_serializer=None,
                                   response_deserializer=metrics_pb2.PushSummary.FromString)
            for h in self.hosts[k:k + hosts_per_channel]:
                h.control = connect()
                await h.control.write(control_pb2.AgentMessage(hello=control_pb2.Hello(
                    host_id=h.host_id, session_id=h.session_id, hostname=h.host_id, agent_version="bench",
                    interval_ms=5000, os="Linux", cpu_count=8, labels={"bench": "gateway"})))
                first = await asyncio.wait_for(h.control.read(), 30)
                if first.WhichOneof("body") != "welcome":
                    raise RuntimeError(f"{h.host_id}: no welcome")
                h.push = push()
                self.readers.append(asyncio.create_task(self._read(h)))

    async def _read(self, h: SimHost) -> None:
        import grpc

        while (msg := await h.control.read()) is not grpc.aio.EOF:
            kind = msg.WhichOneof("body")
            seqs = list(getattr(msg, kind).seqs) if kind in ("ack", "nack") else [msg.reject.seq] if kind == "reject" \
                else []
            if kind == "reject":
                self.rejected.append(msg.reject.message)
            for s in seqs:
                if s in h.inflight:
                    h.inflight.discard(s)
                    h.window.release()
                    if kind == "ack":
                        self.acked += 1

    async def send(self, h: SimHost, times_ms: list[int]) -> None:
        await h.window.acquire()
        h.seq += 1
        h.inflight.add(h.seq)
        await h.push.write(self.enc.batch(h.prefix, h.seq, times_ms, not h.declared))
        h.declared = True

    async def load_history(self, hours: float, interval_s: float = 5.0, frames_per_batch: int = 500,
                           progress: bool = True) -> int:
        """Every host's last `hours` at `interval_s`, oldest first; returns when all is acknowledged."""
        now = int(time.time() * 1000)
        step = int(interval_s * 1000)
        start = now - int(hours * 3600_000) + 60_000  # inside the aggregator's max_past
        times = list(range(start - start % step, now - step, step))
        batches = [times[i:i + frames_per_batch] for i in range(0, len(times), frames_per_batch)]
        total = len(batches) * len(self.hosts)
        t0 = time.monotonic()

        async def one(h: SimHost) -> None:
            for b in batches:
                await self.send(h, b)

        sender = asyncio.gather(*(one(h) for h in self.hosts))
        shown = 0.0
        while self.acked < total:
            if progress and time.monotonic() - shown > 10:
                shown = time.monotonic()
                rate = self.acked * frames_per_batch * self.enc.n / max(time.monotonic() - t0, 1e-9)
                print(f"  loading history: {self.acked:,}/{total:,} batches ({rate:,.0f} samples/s)", flush=True)
            if self.rejected:
                raise RuntimeError(f"rejected: {self.rejected[:3]}")
            await asyncio.sleep(0.2)
        await sender
        if progress:
            print(f"  loaded {len(times) * len(self.hosts) * self.enc.n:,} samples in "
                  f"{time.monotonic() - t0:.0f}s", flush=True)
        return len(times) * len(self.hosts) * self.enc.n

    async def close(self) -> None:
        for r in self.readers:
            r.cancel()
        for h in self.hosts:
            h.push.cancel()
            h.control.cancel()
        for ch in self.channels:
            await ch.close()
