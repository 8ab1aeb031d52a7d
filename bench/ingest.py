"""Ingest benchmark: many simulated collectors over real gRPC into a real aggregator and storage.

    python bench/ingest.py [--hosts 1000] [--series 60] [--interval 5] [--duration 60]
                           [--mode steady|flatout] [--frames-per-batch 10] [--window 4] [--generators 1]
    python bench/ingest.py --mode steady --compare-prometheus [--rounds 2] [--exporter-gzip]

Embedded PostgreSQL and Redis (default tuning) run in a fresh temp directory, the aggregator as a
process of its own (`python -m sysmon aggregator`), and the load generators as processes of their
own, so that psutil measures each apart. Every simulated host opens what a collector opens: a
ControlService.Connect stream (Hello, then Acks read back) and a MetricsService.Push stream on which
it declares its series once and then sends frames of refs and packed values. Hosts share a few
channels (HTTP/2 multiplexes their streams). Batches are encoded by hand from pre-built pieces
(the bytes protobuf would produce; checked against it at start) and written with an identity
serializer, so that the generator costs little next to the aggregator.

steady:  every host sends one batch (one frame of --series samples, stamped now) every --interval
         seconds, staggered evenly across the interval. Figure: delay from sample time to
         queryable in PostgreSQL, i.e. to the Ack, which the aggregator sends only after COMMIT.
flatout: every host keeps up to --window unacknowledged batches of --frames-per-batch frames in
         flight and sends the next as soon as one is acked. Frames carry distinct timestamps on a
         per-host virtual clock (5 s apart, from now-20h) so that every sample is a new row.
         Figure: the highest sustained rate of samples stored.

After --warmup seconds (not measured) the run is measured for --duration seconds: rows added to
samples_raw (counted in PostgreSQL), samples acked (generator side), latency, CPU and memory of
the aggregator, PostgreSQL (all its processes), Redis and the generators, and the aggregator's own
counters from its /metrics (rejections, nacks, queue). Then the raw tier's bytes per stored sample
after CHECKPOINT and VACUUM ANALYZE.

--bus kafka: the aggregator publishes on the Kafka bus (SYSMON_BUS_URL, an embedded tansu broker,
one message per host keyed by host id) instead of Redis Streams; --bus both: a Redis run, then a
Kafka run with the same load, and Kafka's figures over Redis's.

--compare-prometheus (steady): sysmon's run and a Prometheus run scraping the same fleet, in turn,
--rounds times, and sysmon's CPU over Prometheus's (bench/prom_compare.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing as mp
import os
import random
import shlex
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    Monitor,
    Stack,
    delta,
    fmt,
    percentile,
    print_report,
    print_rows,
    scrape,
    summed,
)

PUSH = "/sysmon.v1.MetricsService/Push"
CONNECT = "/sysmon.v1.ControlService/Connect"
GAUGE, RATE = 1, 2
VALUE_VARIANTS = 64

# --- series and wire encoding ------------------------------------------------------------------------


def realistic_series(n: int) -> list[tuple[str, dict[str, str], str, int]]:
    """`n` series named as OpenTelemetry's system metrics, as a typical Linux host reports them."""
    out: list[tuple[str, dict[str, str], str, int]] = []
    for s in ("used", "free", "cached", "buffered"):
        out.append(("system.memory.usage", {"state": s}, "By", GAUGE))
        out.append(("system.memory.utilization", {"state": s}, "1", GAUGE))
    for w in ("1m", "5m", "15m"):
        out.append((f"system.cpu.load_average.{w}", {}, "{thread}", GAUGE))
    for s in ("used", "free"):
        out.append(("system.paging.usage", {"state": s}, "By", GAUGE))
    for s in ("running", "sleeping", "blocked"):
        out.append(("system.processes.count", {"status": s}, "{process}", GAUGE))
    for s in ("used", "free", "reserved"):
        out.append(("system.filesystem.usage", {"device": "/dev/nvme0n1p1", "mountpoint": "/", "state": s},
                    "By", GAUGE))
    out.append(("system.filesystem.utilization", {"device": "/dev/nvme0n1p1", "mountpoint": "/"}, "1", GAUGE))
    for name, unit in (("system.network.io", "By/s"), ("system.network.packets", "{packet}/s"),
                       ("system.network.errors", "{error}/s")):
        for d in ("transmit", "receive"):
            out.append((name, {"device": "eth0", "direction": d}, unit, RATE))
    for name, unit in (("system.disk.io", "By/s"), ("system.disk.operations", "{operation}/s")):
        for d in ("read", "write"):
            out.append((name, {"device": "nvme0n1", "direction": d}, unit, RATE))
    cpu = 0
    while len(out) < n:
        for s in ("user", "system", "idle", "iowait"):
            out.append(("system.cpu.utilization", {"cpu": str(cpu), "state": s}, "1", GAUGE))
        cpu += 1
    return out[:n]


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def ld(field_no: int, data: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return varint(field_no << 3 | 2) + varint(len(data)) + data


def value_variants(n_series: int, seed: int = 1) -> list[list[float]]:
    """The VALUE_VARIANTS sets of `n_series` values that simulated hosts send in turn (0..100)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [[float(x) for x in rng.random(n_series) * 100.0] for _ in range(VALUE_VARIANTS)]


class Encoder:
    """MetricBatch bytes from pre-built pieces: what protobuf would write, without building messages."""

    def __init__(self, n_series: int, seed: int = 1):
        import numpy as np

        from sysmon.pb.v1 import metrics_pb2

        self.n = n_series
        defs = [
            metrics_pb2.SeriesDef(ref=i + 1, name=name, attributes=attrs, unit=unit, kind=kind)
            for i, (name, attrs, unit, kind) in enumerate(realistic_series(n_series))
        ]
        self.defs = defs
        self.declarations = b"".join(ld(4, d.SerializeToString(deterministic=True)) for d in defs)
        self.refs_field = ld(2, b"".join(varint(i + 1) for i in range(n_series)))
        self.values: list[list[float]] = value_variants(n_series, seed)
        self.values_fields = [ld(3, np.asarray(v, dtype="<f8").tobytes()) for v in self.values]

    def prefix(self, host_id: str, session_id: str) -> bytes:
        return ld(1, host_id.encode()) + ld(2, session_id.encode())

    def frame(self, time_ms: int, variant: int) -> bytes:
        return ld(5, b"\x08" + varint(time_ms) + self.refs_field + self.values_fields[variant % VALUE_VARIANTS])

    def batch(self, prefix: bytes, seq: int, times_ms: list[int], declare: bool) -> bytes:
        parts = [prefix, b"\x18", varint(seq)]
        if declare:
            parts.append(self.declarations)
        parts.extend(self.frame(t, seq + i) for i, t in enumerate(times_ms))
        return b"".join(parts)

    def check(self) -> None:
        """The hand-made bytes decode to exactly the message protobuf would build."""
        from sysmon.pb.v1 import metrics_pb2

        t = int(time.time() * 1000)
        got = metrics_pb2.MetricBatch.FromString(self.batch(self.prefix("h-1", "s-1"), 7, [t, t + 5000], True))
        want = metrics_pb2.MetricBatch(host_id="h-1", session_id="s-1", seq=7, series=self.defs)
        for i, ft in enumerate((t, t + 5000)):
            want.frames.add(time_unix_ms=ft, refs=range(1, self.n + 1), values=self.values[(7 + i) % VALUE_VARIANTS])
        assert got == want, "hand-encoded MetricBatch differs from protobuf's"


# --- the load generator (runs in its own process) --------------------------------------------------------


@dataclass
class GenConfig:
    address: str
    mode: str
    hosts: list[int]  # global host indices this generator simulates
    total_hosts: int
    series: int
    interval: float
    frames_per_batch: int
    window: int
    hosts_per_channel: int
    run_id: str
    clock: str = "past"


@dataclass
class Host:
    index: int
    host_id: str
    session_id: str
    prefix: bytes
    seq: int = 0
    control: object = None
    push: object = None
    declared: bool = False
    vclock_ms: int = 0
    # seq -> (send time s, first sample time ms, samples)
    inflight: dict[int, tuple[float, int, int]] = field(default_factory=dict)
    window: asyncio.Semaphore | None = None


@dataclass
class GenStats:
    m_start: float = 0.0
    m_end: float = 0.0
    sent_batches: int = 0
    sent_samples: int = 0
    acked_batches: int = 0
    acked_samples: int = 0
    acked_batches_total: int = 0
    nacked: int = 0
    rejected: int = 0
    late_sends: int = 0  # steady: a send more than 1 s behind its schedule
    max_send_lag_s: float = 0.0
    ack_latency_ms: list[float] = field(default_factory=list)
    sample_delay_ms: list[float] = field(default_factory=list)
    ack_timeline: dict[int, int] = field(default_factory=dict)  # second since m_start -> samples acked
    errors: list[str] = field(default_factory=list)

    def in_window(self, t: float) -> bool:
        return self.m_start <= t < self.m_end

    def on_ack(self, now: float, rec: tuple[float, int, int]) -> None:
        self.acked_batches_total += 1
        if not self.in_window(now):
            return
        sent, sample_ms, n = rec
        self.acked_batches += 1
        self.acked_samples += n
        self.ack_latency_ms.append((now - sent) * 1000.0)
        self.sample_delay_ms.append(now * 1000.0 - sample_ms)
        sec = int(now - self.m_start)
        self.ack_timeline[sec] = self.ack_timeline.get(sec, 0) + n


def generator_entry(cfg: GenConfig, conn) -> None:
    """Process entry: connect every host, report ready, run the load when told, send back the figures."""
    try:
        asyncio.run(_generate(cfg, conn))
    except Exception as e:  # the parent reports it
        conn.send(("error", f"{type(e).__name__}: {e}"))
        raise


async def _generate(cfg: GenConfig, conn) -> None:
    import grpc

    from sysmon.pb.v1 import control_pb2, metrics_pb2

    enc = Encoder(cfg.series)
    enc.check()
    stats = GenStats()
    hosts = []
    for i in cfg.hosts:
        host_id, session_id = f"bench-host-{i:05d}", f"{cfg.run_id}-{i}"
        hosts.append(Host(i, host_id, session_id, enc.prefix(host_id, session_id)))
    channels = []
    opts = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_send_message_length", 64 << 20),
            ("grpc.max_receive_message_length", 64 << 20)]
    stubs = []
    for k in range(0, len(hosts), cfg.hosts_per_channel):
        ch = grpc.aio.insecure_channel(cfg.address, options=opts)
        channels.append(ch)
        connect = ch.stream_stream(CONNECT, request_serializer=control_pb2.AgentMessage.SerializeToString,
                                   response_deserializer=control_pb2.AggregatorMessage.FromString)
        push = ch.stream_unary(PUSH, request_serializer=None, response_deserializer=metrics_pb2.PushSummary.FromString)
        stubs.extend([(connect, push)] * len(hosts[k:k + cfg.hosts_per_channel]))

    readers: list[asyncio.Task] = []

    async def read_control(h: Host) -> None:
        eof = grpc.aio.EOF
        while (msg := await h.control.read()) is not eof:
            now = time.time()
            kind = msg.WhichOneof("body")
            if kind == "ack":
                for seq in msg.ack.seqs:
                    rec = h.inflight.pop(seq, None)
                    if rec is not None:
                        stats.on_ack(now, rec)
                        if h.window is not None:
                            h.window.release()
            elif kind == "nack":
                stats.nacked += len(msg.nack.seqs)
                for seq in msg.nack.seqs:
                    if h.inflight.pop(seq, None) is not None and h.window is not None:
                        h.window.release()
            elif kind == "reject":
                stats.rejected += 1
                if len(stats.errors) < 5:
                    stats.errors.append(f"reject seq={msg.reject.seq}: {msg.reject.message}")
                if h.inflight.pop(msg.reject.seq, None) is not None and h.window is not None:
                    h.window.release()

    gate = asyncio.Semaphore(64)

    async def open_host(h: Host, connect, push) -> None:
        async with gate:
            h.control = connect()
            await h.control.write(control_pb2.AgentMessage(hello=control_pb2.Hello(
                host_id=h.host_id, session_id=h.session_id, hostname=h.host_id, agent_version="bench",
                interval_ms=int(cfg.interval * 1000), os="Linux", cpu_count=8, labels={"bench": "ingest"})))
            first = await asyncio.wait_for(h.control.read(), 30)
            if first is grpc.aio.EOF or first.WhichOneof("body") != "welcome":
                raise RuntimeError(f"{h.host_id}: no welcome")
            h.push = push()
            readers.append(asyncio.create_task(read_control(h)))
            readers.append(asyncio.create_task(heartbeats(h, first.welcome.heartbeat_interval_ms / 1000)))

    async def heartbeats(h: Host, every: float) -> None:
        """As a collector does, at the interval the aggregator's Welcome asks for (first ones spread)."""
        await asyncio.sleep(every * random.random())
        while True:
            await h.control.write(control_pb2.AgentMessage(heartbeat=control_pb2.Heartbeat(
                time_unix_ms=time.time_ns() // 1_000_000, buffered_batches=len(h.inflight), last_seq=h.seq,
                interval_ms=int(cfg.interval * 1000))))
            await asyncio.sleep(every)

    await asyncio.gather(*(open_host(h, c, p) for h, (c, p) in zip(hosts, stubs, strict=True)))
    conn.send(("ready", len(hosts)))
    cmd, t0, m_start, m_end, stop_at = await asyncio.to_thread(conn.recv)
    assert cmd == "go"
    stats.m_start, stats.m_end = m_start, m_end
    interval_ms = int(cfg.interval * 1000)

    async def write(h: Host, times: list[int]) -> None:
        h.seq += 1
        data = enc.batch(h.prefix, h.seq, times, not h.declared)
        h.declared = True
        now = time.time()
        n = cfg.series * len(times)
        h.inflight[h.seq] = (now, times[0], n)
        await h.push.write(data)
        if stats.in_window(now):
            stats.sent_batches += 1
            stats.sent_samples += n

    async def steady(h: Host) -> None:
        due = t0 + cfg.interval * h.index / cfg.total_hosts
        while True:
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            lag = time.time() - due
            if lag > 1.0:
                stats.late_sends += 1
            stats.max_send_lag_s = max(stats.max_send_lag_s, lag)
            await write(h, [int(time.time() * 1000)])
            due += cfg.interval

    async def flatout(h: Host) -> None:
        assert h.window is not None
        await asyncio.sleep(max(0.0, t0 - time.time()) + 0.5 * h.index / cfg.total_hosts)
        while True:
            await h.window.acquire()
            if live:
                # Stamped now, 1 ms apart: distinct per host and inside the hot tier's window.
                start = max(h.vclock_ms, int(time.time() * 1000))
                times = [start + j for j in range(cfg.frames_per_batch)]
                h.vclock_ms = times[-1] + 1
            else:
                times = [h.vclock_ms + interval_ms * j for j in range(cfg.frames_per_batch)]
                h.vclock_ms += interval_ms * cfg.frames_per_batch
                if h.vclock_ms > time.time() * 1000 - 60_000:
                    stats.errors.append(f"{h.host_id}: virtual clock reached now; stopped")
                    return
            await write(h, times)

    live = cfg.clock == "live"
    base = (int(time.time()) - 20 * 3600) * 1000
    senders = []
    for h in hosts:
        if cfg.mode == "flatout":
            h.window = asyncio.Semaphore(cfg.window)
            h.vclock_ms = base + random.Random(h.index).randrange(0, interval_ms, 1000)
            senders.append(asyncio.create_task(flatout(h)))
        else:
            senders.append(asyncio.create_task(steady(h)))
    await asyncio.sleep(max(0.0, stop_at - time.time()))
    for t in senders:
        if t.done() and not t.cancelled() and t.exception() is not None and len(stats.errors) < 5:
            stats.errors.append(f"sender: {t.exception()!r}")
        t.cancel()
    await asyncio.gather(*senders, return_exceptions=True)
    outstanding = sum(1 for h in hosts for (sent, _, _) in h.inflight.values() if sent < m_end - 5.0)
    for t in readers:
        if t.done() and not t.cancelled() and t.exception() is not None and len(stats.errors) < 5:
            stats.errors.append(f"control stream: {t.exception()!r}")
        t.cancel()
    for h in hosts:
        h.push.cancel()
        h.control.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    for ch in channels:
        await ch.close(grace=None)
    result = {k: v for k, v in stats.__dict__.items()}
    result["outstanding"] = outstanding
    conn.send(("result", result))


# --- the run --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--hosts", type=int, default=1000)
    p.add_argument("--series", type=int, default=60, help="series per host")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between batches of a host (steady), "
                   "and between frame timestamps (flatout)")
    p.add_argument("--duration", type=float, default=60.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds of load before measuring")
    p.add_argument("--mode", choices=("steady", "flatout"), default="steady")
    p.add_argument("--frames-per-batch", type=int, default=10, help="flatout: frames per batch")
    p.add_argument("--window", type=int, default=4, help="flatout: unacknowledged batches per host")
    p.add_argument("--clock", choices=("past", "live"), default="past",
                   help="flatout frame times: past = a per-host clock from now-20h, 5 s (--interval) apart;\n"
                        "live = now, 1 ms apart (the hot tier then stores every frame, as with live data)")
    p.add_argument("--generators", type=int, default=1, help="load generator processes")
    p.add_argument("--hosts-per-channel", type=int, default=100)
    p.add_argument("--aggregator-env", action="append", default=[], metavar="SYSMON_X=VALUE",
                   help="an aggregator setting to try (repeatable), e.g. SYSMON_WRITERS=4")
    p.add_argument("--aggregator-cmd", default=None,
                   help="command that runs the aggregator instead of `python -m sysmon aggregator`\n"
                        "(e.g. a script applying a candidate patch), split like a shell would")
    p.add_argument("--bus", choices=("redis", "kafka", "both"), default="redis",
                   help="the bus the aggregator publishes on; both: one run each, and the ratio")
    p.add_argument("--bus-partitions", type=int, default=12, help="partitions per Kafka topic")
    p.add_argument("--keep", action="store_true", help="keep the data directory")
    p.add_argument("--data-dir", type=Path, default=None, help="default: a fresh temp directory")
    p.add_argument("--compare-prometheus", action="store_true",
                   help="steady: also run Prometheus scraping the same fleet (--hosts targets x --series\n"
                        "series every --interval, served by one exporter process), alternately with\n"
                        "sysmon, and report the CPU of both (bench/prom_compare.py)")
    p.add_argument("--rounds", type=int, default=2,
                   help="--compare-prometheus: rounds of (sysmon run, Prometheus run)")
    p.add_argument("--exporter-gzip", action="store_true",
                   help="--compare-prometheus: the exporter gzips its responses (as node_exporter does);\n"
                        "default plain text, the cheaper path for Prometheus")
    args = p.parse_args(argv)
    if args.compare_prometheus and args.bus == "both":
        p.error("--compare-prometheus runs one bus at a time")
    if args.compare_prometheus and args.mode != "steady":
        p.error("--compare-prometheus needs --mode steady")
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    return args


async def _count(conn) -> tuple[float, int]:
    """Samples stored: open rows, and those of hours already sealed into blocks (flat out, the
    virtual clock writes closed hours, which the aggregator's own jobs roll up and seal meanwhile)."""
    t = time.time()
    return t, await conn.fetchval(
        "SELECT (SELECT count(*) FROM samples_raw) + (SELECT coalesce(sum(count), 0) FROM samples_sealed)")


async def _wal_lsn(conn) -> int:
    return int(await conn.fetchval("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"))


async def run(args: argparse.Namespace, *, json_line: bool = True) -> dict:
    """One run; its report is printed, with the JSON line unless json_line is False (a run of several)."""
    import asyncpg

    agg_env = dict(kv.split("=", 1) for kv in args.aggregator_env)
    agg_cmd = shlex.split(args.aggregator_cmd) if args.aggregator_cmd else None
    stack = Stack(args.data_dir, keep=args.keep, aggregator_cmd=agg_cmd, aggregator_env=agg_env,
                  bus=args.bus, bus_partitions=args.bus_partitions)
    procs: list[mp.Process] = []
    pipes = []
    try:
        print(f"data dir {stack.data_dir}; starting PostgreSQL, Redis and the aggregator...", flush=True)
        await asyncio.to_thread(stack.start)
        print(f"aggregator {stack.address} (pid {stack.aggregator.pid}) SERVING, storage up; "
              f"starting {args.generators} generator(s) for {args.hosts} hosts...", flush=True)
        ctx = mp.get_context("spawn")
        run_id = uuid.uuid4().hex[:12]
        for g in range(args.generators):
            cfg = GenConfig(stack.address, args.mode, list(range(g, args.hosts, args.generators)), args.hosts,
                            args.series, args.interval, args.frames_per_batch, args.window, args.hosts_per_channel,
                            run_id, args.clock)
            parent, child = ctx.Pipe()
            p = ctx.Process(target=generator_entry, args=(cfg, child), name=f"generator-{g}", daemon=True)
            p.start()
            procs.append(p)
            pipes.append(parent)
        for parent in pipes:
            msg = await _recv(parent, 180)
            if msg[0] != "ready":
                raise RuntimeError(f"generator failed: {msg[1]}")
        print("all hosts connected (Connect + Push streams open)", flush=True)

        db = await asyncpg.connect(stack.dsn)
        t0 = time.time() + 1.0
        m_start = t0 + args.warmup
        m_end = m_start + args.duration
        stop_at = m_end + (3.0 if args.mode == "flatout" else min(args.interval, 5.0) + 3.0)
        for parent in pipes:
            parent.send(("go", t0, m_start, m_end, stop_at))
        print(f"load: {args.mode}, warm-up {args.warmup:g}s, then measuring {args.duration:g}s...", flush=True)

        import psutil

        watched = {
            "aggregator": stack.aggregator_process,
            "postgres": stack.postmaster,
            "redis": stack.redis_process,
            "harness": psutil.Process(),
        }
        if stack.broker_process is not None:
            watched["broker"] = stack.broker_process
        for i, p in enumerate(procs):
            watched[f"generator{i}"] = psutil.Process(p.pid)
        await asyncio.sleep(max(0.0, m_start - time.time()))
        # The harness's own queries (count(*) scans the table) stay outside the CPU window.
        metrics0 = await asyncio.to_thread(scrape, stack.metrics_url)
        wal0 = await _wal_lsn(db)
        c0_t, c0 = await _count(db)
        mon = Monitor(watched, period=1.0, trees=("postgres", "redis")).start()
        await asyncio.sleep(max(0.0, m_end - time.time()))
        usage = mon.stop()
        c1_t, c1 = await _count(db)
        wal1 = await _wal_lsn(db)
        metrics1 = await asyncio.to_thread(scrape, stack.metrics_url)
        print("measured; collecting results...", flush=True)

        results = []
        for parent in pipes:
            msg = await _recv(parent, 120)
            if msg[0] != "result":
                raise RuntimeError(f"generator failed: {msg[1]}")
            results.append(msg[1])
        for p in procs:
            p.join(30)

        # Everything queued is committed: the counter and the table must agree exactly.
        drained = await _drain(stack.metrics_url)
        metrics_end = await asyncio.to_thread(scrape, stack.metrics_url)
        _, rows_total = await _count(db)
        stored_counter = metrics_end.get("sysmon_aggregator_samples_stored_total", math.nan)
        t_stop = time.monotonic()
        agg_rc = await asyncio.to_thread(stack.stop_aggregator)
        agg_stop_s = time.monotonic() - t_stop

        await db.execute("CHECKPOINT")
        await db.execute("VACUUM ANALYZE raw_frames")
        size = await db.fetchrow(
            """
            SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::int8 AS total,
                   coalesce(sum(pg_relation_size(c.oid)), 0)::int8 AS heap,
                   coalesce(sum(pg_indexes_size(c.oid)), 0)::int8 AS indexes,
                   count(*) FILTER (WHERE c.reltuples > 0) AS used_partitions
            FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent = 'raw_frames'::regclass
            """
        )
        rows_after_vacuum = await db.fetchval("SELECT count(*) FROM samples_raw")
        sealed_samples = await db.fetchval("SELECT coalesce(sum(count), 0) FROM samples_sealed")
        await db.close()
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        await asyncio.to_thread(stack.stop)

    gen = _merge(results)
    elapsed = c1_t - c0_t
    window = m_end - m_start
    stored_rate = (c1 - c0) / elapsed
    d = delta(metrics1, metrics0, "sysmon_aggregator_")
    offered = (args.hosts * args.series / args.interval) if args.mode == "steady" else math.nan
    commits = d.get("sysmon_aggregator_commit_seconds_count", 0.0)
    commit_sum = d.get("sysmon_aggregator_commit_seconds_sum", 0.0)
    stored_counter_window = d.get("sysmon_aggregator_samples_stored_total", 0.0)
    gens = [usage[k] for k in usage if k.startswith("generator")]
    agg = usage["aggregator"]
    figures = {
        "bench": "ingest",
        "mode": args.mode,
        "hosts": args.hosts,
        "series": args.series,
        "interval_s": args.interval,
        "frames_per_batch": args.frames_per_batch if args.mode == "flatout" else 1,
        "window": args.window if args.mode == "flatout" else None,
        "clock": args.clock if args.mode == "flatout" else "now",
        "generators": args.generators,
        "aggregator_env": agg_env,
        "aggregator_cmd": args.aggregator_cmd,
        "duration_s": round(window, 3),
        "offered_samples_per_s": offered,
        "stored_samples_per_s": stored_rate,
        "stored_rows_in_window": c1 - c0,
        "stored_samples_per_s_counter": stored_counter_window / window,
        "acked_samples_per_s": gen["acked_samples"] / window,
        "sent_samples_per_s": gen["sent_samples"] / window,
        "acked_batches": gen["acked_batches"],
        "ack_latency_p50_ms": percentile(gen["ack_latency_ms"], 50),
        "ack_latency_p99_ms": percentile(gen["ack_latency_ms"], 99),
        "ack_latency_max_ms": max(gen["ack_latency_ms"], default=math.nan),
        "aggregator_cpu_pct": agg.cpu_pct,
        "aggregator_cpu_peak_pct": agg.cpu_peak_pct,
        "aggregator_rss_avg_mib": agg.rss_avg_mib,
        "aggregator_rss_max_mib": agg.rss_max_mib,
        "postgres_cpu_pct": usage["postgres"].cpu_pct,
        "redis_cpu_pct": usage["redis"].cpu_pct,
        "bus": args.bus,
        "bus_partitions": args.bus_partitions if args.bus == "kafka" else None,
        "broker_cpu_pct": usage["broker"].cpu_pct if "broker" in usage else None,
        "broker_rss_max_mib": usage["broker"].rss_max_mib if "broker" in usage else None,
        "generator_cpu_pct": sum(g.cpu_pct for g in gens),
        "harness_cpu_pct": usage["harness"].cpu_pct,
        "machine_busy_pct_of_all_cores": mon.machine_busy_pct,
        "cores": os.cpu_count(),
        "aggregator_cpu_us_per_sample": agg.cpu_seconds / max(c1 - c0, 1) * 1e6,
        "postgres_cpu_us_per_sample": usage["postgres"].cpu_seconds / max(c1 - c0, 1) * 1e6,
        "wal_bytes_per_sample": (wal1 - wal0) / max(c1 - c0, 1),
        "commits_per_s": commits / window,
        "commit_avg_ms": commit_sum / commits * 1000 if commits else math.nan,
        "samples_per_commit": stored_counter_window / commits if commits else math.nan,
        "rejections": summed(d, "sysmon_aggregator_rejections_total"),
        "nacks": d.get("sysmon_aggregator_nacked_batches_total", 0.0),
        "commit_failures": d.get("sysmon_aggregator_commit_failures_total", 0.0),
        "hot_skipped_batches": d.get("sysmon_aggregator_hot_skipped_batches_total", 0.0),
        "hot_failures": d.get("sysmon_aggregator_hot_failures_total", 0.0),
        "duplicates": d.get("sysmon_aggregator_duplicate_batches_total", 0.0),
        "queued_samples_at_end": metrics1.get("sysmon_aggregator_queued_samples", math.nan),
        "generator_nacks": gen["nacked"],
        "generator_rejects": gen["rejected"],
        "unacked_after_5s": gen["outstanding"],
        "rows_total": rows_total,
        "stored_counter_total": stored_counter,
        "count_exact": rows_total == stored_counter and drained,
        "raw_bytes_per_sample": size["total"] / rows_after_vacuum if rows_after_vacuum else math.nan,
        "raw_heap_bytes_per_sample": size["heap"] / rows_after_vacuum if rows_after_vacuum else math.nan,
        "raw_index_bytes_per_sample": size["indexes"] / rows_after_vacuum if rows_after_vacuum else math.nan,
        "raw_total_mib": size["total"] / 1048576,
        "samples_sealed": sealed_samples,
        "aggregator_exit_code": agg_rc,
        "aggregator_stop_s": agg_stop_s,
        "errors": gen["errors"][:5],
    }
    if args.mode == "steady":
        figures.update({
            "delay_p50_ms": percentile(gen["sample_delay_ms"], 50),
            "delay_p99_ms": percentile(gen["sample_delay_ms"], 99),
            "delay_max_ms": max(gen["sample_delay_ms"], default=math.nan),
            "late_sends": gen["late_sends"],
            "max_send_lag_s": gen["max_send_lag_s"],
        })
    timeline = [gen["ack_timeline"].get(s, 0) for s in range(int(window))]
    buckets = [sum(timeline[i:i + 5]) / 5 for i in range(0, len(timeline) - 4, 5)]
    figures["acked_per_s_5s_min"] = min(buckets, default=math.nan)
    figures["acked_per_s_5s_max"] = max(buckets, default=math.nan)
    _report(args, figures, buckets, json_line)
    return figures


def _merge(results: list[dict]) -> dict:
    out: dict = {}
    for r in results:
        for k, v in r.items():
            if isinstance(v, list):
                out.setdefault(k, []).extend(v)
            elif isinstance(v, dict):
                acc = out.setdefault(k, {})
                for kk, vv in v.items():
                    acc[kk] = acc.get(kk, 0) + vv
            elif k in ("max_send_lag_s", "m_start", "m_end"):
                out[k] = max(out.get(k, v), v)
            else:
                out[k] = out.get(k, 0) + v
    return out


async def _recv(conn, within: float):
    ready = await asyncio.to_thread(conn.poll, within)
    if not ready:
        raise RuntimeError(f"no answer from a generator within {within}s")
    return conn.recv()


async def _drain(metrics_url: str, within: float = 60.0) -> bool:
    """Wait until the aggregator has nothing queued and its stored counter stops moving."""
    deadline = time.monotonic() + within
    last = -1.0
    while time.monotonic() < deadline:
        m = await asyncio.to_thread(scrape, metrics_url)
        stored = m.get("sysmon_aggregator_samples_stored_total", 0.0)
        if m.get("sysmon_aggregator_queued_samples", 1) == 0 and stored == last:
            return True
        last = stored
        await asyncio.sleep(1.0)
    return False


def _report(args: argparse.Namespace, f: dict, buckets: list[float], json_line: bool = True) -> None:
    steady = args.mode == "steady"
    if steady:
        load = (f"{args.hosts} hosts x {args.series} series every {args.interval:g}s = "
                f"{fmt(f['offered_samples_per_s'], digits=0)} samples/s offered")
    else:
        load = (f"{args.hosts} hosts x window {args.window} x {args.frames_per_batch} frames x {args.series} series "
                f"(as fast as acked), {args.clock} clock")
    rows = [
        ("load", load),
        ("measured", f"{f['duration_s']:.1f} s after {args.warmup:g} s warm-up; {args.generators} generator(s)"),
        *([("aggregator", f"{f['aggregator_cmd'] or 'python -m sysmon aggregator'} {f['aggregator_env'] or ''}")]
          if f["aggregator_cmd"] or f["aggregator_env"] else []),
        "throughput",
    ]
    stored = ("samples stored/s (PostgreSQL rows)", fmt(f["stored_samples_per_s"], digits=0))
    if steady:
        rows.append(stored)
    else:
        ok = f["stored_samples_per_s"] >= 100_000
        rows.append((*stored, ">= 100,000/s sustained", ok))
    rows += [
        ("  same, from aggregator counter", fmt(f["stored_samples_per_s_counter"], digits=0)),
        ("samples acked/s (generator)", fmt(f["acked_samples_per_s"], digits=0)),
        ("samples sent/s (generator)", fmt(f["sent_samples_per_s"], digits=0)),
        ("acked/s per 5 s, min..max", f"{fmt(f['acked_per_s_5s_min'], digits=0)} .. "
                                      f"{fmt(f['acked_per_s_5s_max'], digits=0)}"),
        ("group commits", f"{fmt(f['commits_per_s'])}/s, avg {fmt(f['commit_avg_ms'])} ms, "
                          f"{fmt(f['samples_per_commit'], digits=0)} samples each"),
        "latency",
    ]
    if steady:
        rows += [
            ("delay sample -> queryable p50", fmt(f["delay_p50_ms"], "ms")),
            ("delay sample -> queryable p99", fmt(f["delay_p99_ms"], "ms"), "<= 2,000 ms",
             f["delay_p99_ms"] <= 2000),
            ("delay sample -> queryable max", fmt(f["delay_max_ms"], "ms")),
            ("sends > 1 s behind schedule", f"{f['late_sends']} (max lag {f['max_send_lag_s']:.3f} s)"),
        ]
    else:
        rows += [
            ("ack latency (send -> ack) p50", fmt(f["ack_latency_p50_ms"], "ms")),
            ("ack latency (send -> ack) p99", fmt(f["ack_latency_p99_ms"], "ms")),
        ]
    rows += [
        "CPU (% of one core) and memory",
        ("aggregator CPU avg / peak(1 s)",
         f"{fmt(f['aggregator_cpu_pct'])} % / {fmt(f['aggregator_cpu_peak_pct'])} %"),
        ("aggregator RSS avg / max",
         f"{fmt(f['aggregator_rss_avg_mib'])} MiB / {fmt(f['aggregator_rss_max_mib'])} MiB"),
        ("PostgreSQL CPU (all processes)", f"{fmt(f['postgres_cpu_pct'])} %"),
        ("Redis CPU", f"{fmt(f['redis_cpu_pct'])} %"),
        *([("Kafka broker (tansu) CPU / RSS max",
            f"{fmt(f['broker_cpu_pct'])} % / {fmt(f['broker_rss_max_mib'])} MiB")] if f["broker_cpu_pct"] is not None
          else []),
        ("generator CPU", f"{fmt(f['generator_cpu_pct'])} %"),
        ("harness CPU", f"{fmt(f['harness_cpu_pct'])} %"),
        ("whole machine busy", f"{fmt(f['machine_busy_pct_of_all_cores'])} % of {f['cores']} cores"),
        ("CPU per stored sample", f"aggregator {fmt(f['aggregator_cpu_us_per_sample'], 'us', 2)}, "
                                  f"PostgreSQL {fmt(f['postgres_cpu_us_per_sample'], 'us', 2)}"),
        "correctness",
        ("rejections / nacks / commit failures", f"{f['rejections']:.0f} / {f['nacks']:.0f} / "
                                                 f"{f['commit_failures']:.0f}",
         "0 / 0 / 0", f["rejections"] == f["nacks"] == f["commit_failures"] == 0),
        ("hot tier skipped / failed batches", f"{f['hot_skipped_batches']:.0f} / {f['hot_failures']:.0f}"),
        ("duplicates", f"{f['duplicates']:.0f}"),
        (("batches unacked 5 s after sending" if steady else "batches in flight at stop"),
         str(f["unacked_after_5s"]), *(("0", f["unacked_after_5s"] == 0) if steady else ())),
        ("rows == stored counter", f"{f['rows_total']:,} rows, counter {f['stored_counter_total']:,.0f}",
         "exact", f["count_exact"]),
        "storage (the raw tier's open area: frames, after CHECKPOINT + VACUUM ANALYZE; bench/storage.py: sealed)",
        ("samples sealed meanwhile", f"{f['samples_sealed']:,} (hours closed during the run, sealed by its jobs)"),
        ("bytes per open sample", f"{fmt(f['raw_bytes_per_sample'])} B (heap {fmt(f['raw_heap_bytes_per_sample'])}"
                                    f" + indexes {fmt(f['raw_index_bytes_per_sample'])}; "
                                    f"{fmt(f['raw_total_mib'])} MiB total)"),
        ("WAL bytes per stored sample", fmt(f["wal_bytes_per_sample"], "B")),
        ("aggregator stop (SIGTERM)", f"exit {f['aggregator_exit_code']} in {f['aggregator_stop_s']:.1f} s"),
    ]
    if f["errors"]:
        rows.append(("errors", "; ".join(f["errors"])))
    if json_line:
        print_report(f"sysmon ingest benchmark: {args.mode}, {args.bus} bus", rows, f)
    else:
        print_rows(f"sysmon ingest benchmark: {args.mode}, {args.bus} bus", rows)


# Figures compared between the buses, and whether more is better.
BUS_COMPARED = (
    ("stored_samples_per_s", True),
    ("acked_samples_per_s", True),
    ("aggregator_cpu_pct", False),
    ("aggregator_cpu_us_per_sample", False),
    ("aggregator_rss_max_mib", False),
    ("delay_p99_ms", False),
    ("ack_latency_p99_ms", False),
)


async def compare_buses(args: argparse.Namespace) -> dict:
    """The same load on the Redis bus, then on the Kafka bus; Kafka's figures over Redis's."""
    runs = {}
    for bus in ("redis", "kafka"):
        one = argparse.Namespace(**{**vars(args), "bus": bus})
        runs[bus] = await run(one, json_line=False)
    r, k = runs["redis"], runs["kafka"]
    rows: list = ["Kafka bus / Redis bus, same load, one after the other"]
    ratios = {}
    for name, more_is_better in BUS_COMPARED:
        if name not in r or name not in k:
            continue
        ratio = k[name] / r[name] if r[name] else math.nan
        ratios[name] = ratio
        rows.append((name, f"redis {fmt(r[name])}  kafka {fmt(k[name])}  ratio {fmt(ratio, digits=2)}"
                           f" ({'higher' if more_is_better else 'lower'} is better)"))
    rows.append(("Kafka broker (tansu) CPU", f"{fmt(k['broker_cpu_pct'])} % of one core; "
                                            f"Redis {fmt(r['redis_cpu_pct'])} % / {fmt(k['redis_cpu_pct'])} %"))
    figures = {"bench": "ingest-bus", "mode": args.mode, "hosts": args.hosts, "series": args.series,
               "redis": {n: r.get(n) for n, _ in BUS_COMPARED}, "kafka": {n: k.get(n) for n, _ in BUS_COMPARED},
               "kafka_over_redis": ratios, "broker_cpu_pct": k["broker_cpu_pct"],
               "count_exact": r["count_exact"] and k["count_exact"],
               "hot_failures": r["hot_failures"] + k["hot_failures"]}
    print_report(f"sysmon ingest benchmark: {args.mode}, Kafka bus against Redis bus", rows, figures)
    return figures


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.compare_prometheus:
        from bench.prom_compare import compare

        asyncio.run(compare(args, run))
    elif args.bus == "both":
        asyncio.run(compare_buses(args))
    else:
        asyncio.run(run(args))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
