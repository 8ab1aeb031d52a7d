"""Alerts benchmark: alert latency end to end, and evaluation throughput at fleet scale.

    python bench/alerts.py latency    [--trials 200] [--background-hosts 200]
    python bench/alerts.py throughput [--rules 1000] [--hosts 1000] [--interval 5] [--duration 60]

Both start their own stack in a fresh temp directory: embedded PostgreSQL and Redis, the
aggregator (`python -m sysmon aggregator`) and the alerts service (`python -m sysmon alerts`)
each as a process of its own, so that psutil measures the alerts service apart.

latency:    a rule with `for: 0` and a webhook action; a real HTTP receiver (uvicorn, in a thread of
            this process). Trial by trial, a host sends a sample crossing the threshold over gRPC
            (MetricsService.Push, as a collector does); the figure is the time from the aggregator
            storing that sample (SamplesEvent.stored_unix_ms, read off the bus) to the receiver
            getting the POST, and the same for the sample that resolves it. Meanwhile
            --background-hosts simulated collectors (bench/ingest.py's generator, 60 series every
            5 s) keep the aggregator, the bus and the alerts service busy.
throughput: --rules rules (each selecting one of the 60 series kinds of a typical host by metric
            and attributes, so every host has --rules (rule, series) state machines) over --hosts
            hosts, each sending its 60 series every --interval seconds, staggered. The samples go
            on the bus as the aggregator would publish them (SamplesEvent, series described on a
            host's first event) by a generator process, so the aggregator's own cost (measured by
            bench/ingest.py) stays out. About 1% of (rule, series) pairs sit above their threshold.
            Figures: the alerts service's CPU and memory, evaluations/s from its /metrics, and
            whether it keeps up (its lag behind the bus, and the backlog left at the end).

--bus kafka (both): the aggregator, the alerts service and the publisher on the Kafka bus (an
embedded tansu broker) instead of Redis Streams. throughput --replicas 1 2: one run per count, the
replicas sharing the hosts (Kafka: through the consumer group; Redis: by leases on the samples
shards, --redis-shards, 12 past one replica and one stream for one), and the figures side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing as mp
import os
import random
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    Monitor,
    Stack,
    clean_env,
    delta,
    fmt,
    free_port,
    percentile,
    print_report,
    print_rows,
    scrape,
    stop_process,
)
from bench.ingest import GenConfig, generator_entry, realistic_series

REDIS_SHARDS = 12  # as the operator runs alerts replicas on Redis (sysmon.operator.manifests.REDIS_SHARDS)

LATENCY_METRIC = "bench.latency"


# --- the alerts service as a process --------------------------------------------------------------------


class AlertsProcess:
    def __init__(self, stack: Stack, consumer: str = "alerts-0", **settings: str):
        self.stack = stack
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.consumer = consumer
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def start(self, timeout: float = 120.0) -> None:
        env = clean_env(
            SYSMON_POSTGRES_URL=self.stack.dsn, SYSMON_REDIS_URL=self.stack.redis_url,
            SYSMON_AGGREGATOR=self.stack.address, SYSMON_LISTEN=f"127.0.0.1:{self.port}",
            SYSMON_LOG_LEVEL="warning", SYSMON_CONSUMER=self.consumer, **self.stack.bus_env, **self.settings,
        )
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "sysmon", "alerts"], env=env, cwd=self.stack.data_dir,
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"alerts service exited with {self.proc.returncode}\n{self.log_tail()}")
            with contextlib.suppress(OSError, urllib.error.URLError), \
                    urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"alerts service not ready within {timeout}s\n{self.log_tail()}")
            time.sleep(0.2)

    @property
    def log_path(self) -> Path:
        return self.stack.data_dir / f"{self.consumer}.log"

    def log_tail(self, n: int = 3000) -> str:
        p = self.log_path
        return p.read_text(errors="replace")[-n:] if p.exists() else ""

    def metrics(self) -> dict[str, float]:
        return scrape(f"{self.url}/metrics")

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        stop_process(self.proc, timeout)
        if self._log is not None:
            self._log.close()
        return self.proc.returncode


# --- a webhook receiver in a thread of its own ------------------------------------------------------------


class Receiver:
    """A real HTTP server (uvicorn) in its own thread and event loop, so that the benchmark's own
    work never delays the moment a POST is seen."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.lock = threading.Lock()
        self.got: list[tuple[float, str, str]] = []  # (time.time(), host, status)
        self.posts = 0
        self._server: Any = None
        self._thread = threading.Thread(target=self._run, name="receiver", daemon=True)
        self._started = threading.Event()

    def start(self) -> Receiver:
        self._thread.start()
        if not self._started.wait(30):
            raise RuntimeError("receiver did not start")
        return self

    def _run(self) -> None:
        import uvicorn
        from starlette.applications import Starlette
        from starlette.responses import Response
        from starlette.routing import Route

        async def hook(request: Any) -> Response:
            body = await request.json()
            t = time.time()
            with self.lock:
                self.posts += 1
                for a in body.get("alerts", []):
                    self.got.append((t, a["labels"].get("host", ""), a["status"]))
            return Response(status_code=200)

        app = Starlette(routes=[Route("/hook", hook, methods=["POST"])])
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error",
                                                     lifespan="off", access_log=False))

        async def serve() -> None:
            task = asyncio.create_task(self._server.serve())
            while not self._server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
                await asyncio.sleep(0.01)
            self._started.set()
            await task

        asyncio.run(serve())

    def first(self, host: str, status: str, after: float) -> float | None:
        with self.lock:
            for t, h, s in self.got:
                if h == host and s == status and t >= after:
                    return t
        return None

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        self._thread.join(10)


# --- rules ------------------------------------------------------------------------------------------------


async def apply_rules(address: str, rules: list[tuple[str, dict[str, Any]]]) -> int:
    import grpc

    from sysmon.core.config_model import spec_to_struct
    from sysmon.pb.v1 import config_pb2, config_pb2_grpc

    async with grpc.aio.insecure_channel(address) as ch:
        stub = config_pb2_grpc.ConfigServiceStub(ch)
        version = 0
        for i in range(0, len(rules), 1000):
            resp = await stub.Apply(config_pb2.ApplyRequest(upserts=[
                config_pb2.Resource(kind="AlertRule", name=n, generation=1, spec=spec_to_struct(s))
                for n, s in rules[i:i + 1000]]), timeout=60)
            version = resp.version
        return version


def wait_rules(alerts: AlertsProcess, n: int, within: float = 60.0) -> None:
    deadline = time.monotonic() + within

    def loaded() -> float | None:
        # A busy machine (or a restore in hand) may keep /metrics waiting past the scrape's timeout.
        with contextlib.suppress(OSError):
            return alerts.metrics().get("sysmon_alerts_rules_loaded")
        return None

    while loaded() != n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the alerts service did not load {n} rules\n{alerts.log_tail()}")
        time.sleep(0.1)


def wait_shared(replicas: list[AlertsProcess], partitions: int, within: float = 120.0) -> None:
    deadline = time.monotonic() + within
    while True:
        with contextlib.suppress(OSError):
            owned = [a.metrics().get("sysmon_alerts_partitions_owned", 0.0) for a in replicas]
            if sum(owned) == partitions and all(owned):
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the {len(replicas)} alerts replicas did not share the {partitions} partitions")
        time.sleep(0.2)


# --- latency ---------------------------------------------------------------------------------------------


class LatencyHost:
    """One hand-driven collector over real gRPC: Hello on Connect, then batches on Push."""

    def __init__(self, address: str, host_id: str):
        self.address = address
        self.host_id = host_id
        self.session_id = uuid.uuid4().hex
        self.seq = 0
        self.acked: set[int] = set()
        self._out: asyncio.Queue[Any] = asyncio.Queue()

    async def open(self) -> None:
        import grpc

        from sysmon.pb.v1 import control_pb2, control_pb2_grpc, metrics_pb2_grpc

        self.channel = grpc.aio.insecure_channel(self.address)
        self.control = control_pb2_grpc.ControlServiceStub(self.channel).Connect()
        await self.control.write(control_pb2.AgentMessage(hello=control_pb2.Hello(
            host_id=self.host_id, session_id=self.session_id, agent_version="bench")))
        await self.control.read()
        self._reader = asyncio.create_task(self._read())

        async def batches() -> Any:
            while (b := await self._out.get()) is not None:
                yield b

        self.push = metrics_pb2_grpc.MetricsServiceStub(self.channel).Push(batches())

    async def _read(self) -> None:
        import grpc

        while (msg := await self.control.read()) is not grpc.aio.EOF:
            if msg.WhichOneof("body") == "ack":
                self.acked.update(msg.ack.seqs)

    def send(self, value: float) -> int:
        from sysmon.pb.v1 import metrics_pb2

        self.seq += 1
        b = metrics_pb2.MetricBatch(host_id=self.host_id, session_id=self.session_id, seq=self.seq)
        if self.seq == 1:
            b.series.add(ref=1, name=LATENCY_METRIC, attributes={}, unit="1", kind=1)
        b.frames.add(time_unix_ms=time.time_ns() // 1_000_000, refs=[1], values=[value])
        self._out.put_nowait(b)
        return self.seq

    async def close(self) -> None:
        self._out.put_nowait(None)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.push, 5)
        self._reader.cancel()
        self.control.cancel()
        await self.channel.close()


async def _until(pred: Any, within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


async def run_latency(args: argparse.Namespace) -> dict[str, Any]:
    import redis.asyncio as aioredis

    from sysmon.core.batch import samples_events
    from sysmon.core.bus import SAMPLES

    stack = Stack(args.data_dir, keep=args.keep, bus=args.bus)
    receiver = Receiver().start()
    alerts = None
    gens: list[mp.Process] = []
    try:
        print(f"data dir {stack.data_dir}; starting PostgreSQL, Redis, the aggregator...", flush=True)
        await asyncio.to_thread(stack.start)
        alerts = AlertsProcess(stack)
        await asyncio.to_thread(alerts.start)
        await apply_rules(stack.address, [("latency", {
            "metric": LATENCY_METRIC, "condition": {"op": ">", "threshold": 0.5}, "for": "0s", "repeatInterval": "0s",
            "annotations": {"summary": "{{ host }} crossed at {{ value }}"},
            "actions": [{"webhook": {"url": receiver.url}}],
        })])
        await asyncio.to_thread(wait_rules, alerts, 1)

        if args.background_hosts:
            ctx = mp.get_context("spawn")
            parent, child = ctx.Pipe()
            cfg = GenConfig(stack.address, "steady", list(range(args.background_hosts)), args.background_hosts, 60,
                            5.0, 1, 1, 100, uuid.uuid4().hex[:12])
            p = ctx.Process(target=generator_entry, args=(cfg, child), daemon=True)
            p.start()
            gens.append(p)
            msg = await asyncio.to_thread(parent.recv)
            if msg[0] != "ready":
                raise RuntimeError(f"background generator failed: {msg[1]}")
            t0 = time.time() + 0.5
            parent.send(("go", t0, t0, t0 + 3600, t0 + 3600))
            print(f"background: {args.background_hosts} simulated collectors, 60 series every 5 s", flush=True)
            await asyncio.sleep(args.warmup)

        # The aggregator's store time of each of our batches, from the bus (as the alerts service sees it).
        stored: dict[tuple[str, int], int] = {}
        redis = aioredis.from_url(stack.redis_url)
        bus = bench_bus(stack, redis)

        async def listen() -> None:
            async for m in bus.subscribe(SAMPLES, batch=1000):
                for ev in samples_events(m.payload):
                    if ev.host_id.startswith("lat-"):
                        stored[(ev.host_id, ev.seq)] = ev.stored_unix_ms

        listener = asyncio.create_task(listen())
        hosts = [LatencyHost(stack.address, f"lat-{i:02d}") for i in range(args.hosts)]
        for h in hosts:
            await h.open()
        for h in hosts:  # a first sample below the line: series described, state inactive
            seq = h.send(0.0)
            await _until(lambda h=h, seq=seq: seq in h.acked, 10, "first batch acked")
        monitor = Monitor({"alerts": psutil_process(alerts)}, period=1.0).start()
        m0 = await asyncio.to_thread(alerts.metrics)
        fire_ms: list[float] = []
        resolve_ms: list[float] = []
        from_send_ms: list[float] = []
        print(f"{args.trials} trials: cross, wait for the firing POST, recover, wait for the resolved POST...",
              flush=True)
        for j in range(args.trials):
            h = hosts[j % len(hosts)]
            for value, status, out in ((1.0, "firing", fire_ms), (0.0, "resolved", resolve_ms)):
                sent = time.time()
                seq = h.send(value)
                got = await _until(lambda h=h, status=status, sent=sent: receiver.first(h.host_id, status, sent), 15,
                                   f"{status} POST for {h.host_id}")
                st = await _until(lambda h=h, seq=seq: stored.get((h.host_id, seq)), 5, "the stored event")
                out.append(got * 1000 - st)
                if status == "firing":
                    from_send_ms.append((got - sent) * 1000)
            await asyncio.sleep(args.gap)
        usage = monitor.stop()
        m1 = await asyncio.to_thread(alerts.metrics)
        listener.cancel()
        for h in hosts:
            await h.close()
        await bus.close()
        await redis.aclose()
    finally:
        for p in gens:
            p.terminate()
        if alerts is not None:
            await asyncio.to_thread(alerts.stop)
        receiver.stop()
        await asyncio.to_thread(stack.stop)

    d = delta(m1, m0, "sysmon_alerts_")
    figures = {
        "bench": "alerts-latency",
        "bus": args.bus,
        "trials": args.trials,
        "background_hosts": args.background_hosts,
        "fire_p50_ms": percentile(fire_ms, 50),
        "fire_p99_ms": percentile(fire_ms, 99),
        "fire_max_ms": max(fire_ms, default=math.nan),
        "resolve_p50_ms": percentile(resolve_ms, 50),
        "resolve_p99_ms": percentile(resolve_ms, 99),
        "from_send_p50_ms": percentile(from_send_ms, 50),
        "from_send_p99_ms": percentile(from_send_ms, 99),
        "posts": receiver.posts,
        "notifications_sent": d.get('sysmon_alerts_notifications_sent_total{receiver_type="webhook"}', 0.0),
        "alerts_cpu_pct": usage["alerts"].cpu_pct,
        "cores": os.cpu_count(),
    }
    rows = [
        ("load", f"{args.trials} crossings over {args.hosts} hosts; {args.background_hosts} background collectors; "
                 f"{args.bus} bus"),
        "stored (aggregator) -> webhook POST received, for: 0",
        ("firing p50", fmt(figures["fire_p50_ms"], "ms")),
        ("firing p99", fmt(figures["fire_p99_ms"], "ms"), "<= 1,000 ms", figures["fire_p99_ms"] <= 1000),
        ("firing max", fmt(figures["fire_max_ms"], "ms")),
        ("resolved p50 / p99", f"{fmt(figures['resolve_p50_ms'], 'ms')} / {fmt(figures['resolve_p99_ms'], 'ms')}"),
        ("from the gRPC send, p50 / p99",
         f"{fmt(figures['from_send_p50_ms'], 'ms')} / {fmt(figures['from_send_p99_ms'], 'ms')}"),
        ("POSTs / notifications sent", f"{receiver.posts} / {figures['notifications_sent']:.0f} "
                                       f"(expected {2 * args.trials})"),
        ("alerts service CPU", f"{fmt(figures['alerts_cpu_pct'])} % of one core"),
    ]
    print_report("sysmon alerts benchmark: latency", rows, figures)
    return figures


def bench_bus(stack: Stack, redis: Any) -> Any:
    """The bus the stack runs on, as the services see it."""
    from sysmon.core.bus import RedisBus

    if stack.bus != "kafka":
        return RedisBus(redis, shards=stack.redis_shards)
    from sysmon.core.bus.kafka import KafkaBus, KafkaOptions, parse_kafka_url

    return KafkaBus(KafkaOptions(parse_kafka_url(stack.bus_env["SYSMON_BUS_URL"]), partitions=stack.bus_partitions,
                                 client_id="bench"))


def psutil_process(alerts: AlertsProcess) -> Any:
    import psutil

    assert alerts.proc is not None
    return psutil.Process(alerts.proc.pid)


# --- throughput --------------------------------------------------------------------------------------------


def throughput_rules(n: int) -> list[tuple[str, dict[str, Any]]]:
    kinds = realistic_series(60)
    out = []
    for i in range(n):
        name, attrs, _, _ = kinds[i % len(kinds)]
        out.append((f"rule-{i:04d}", {
            "metric": name, "match": attrs, "aggregation": ("last", "avg", "max")[i % 3], "window": "1m",
            "condition": {"op": ">", "threshold": 99.0, "resolveThreshold": 98.0}, "for": "20s",
            "annotations": {"summary": "{{ host }}: {{ metric }} {{ value | humanize }}"},
        }))
    return out


def publisher_entry(bus_url: str, hosts: list[int], total: int, interval: float, t0: float, stop_at: float,
                    conn: Any, partitions: int = 12) -> None:
    asyncio.run(_publish(bus_url, hosts, total, interval, t0, stop_at, conn, partitions))


async def _publish(bus_url: str, hosts: list[int], total: int, interval: float, t0: float, stop_at: float,
                   conn: Any, partitions: int = 12) -> None:
    """SamplesEvents on the bus as the aggregator publishes them, every host every `interval`
    (bus_url: the Redis URL, or kafka://... for the Kafka bus, keyed by host as the aggregator does)."""
    import redis.asyncio as aioredis

    from sysmon.core.bus import SAMPLES, RedisBus
    from sysmon.core.metrics import series_id
    from sysmon.pb.v1 import events_pb2

    kinds = realistic_series(60)
    if bus_url.startswith("kafka://"):
        from sysmon.core.bus.kafka import KafkaBus, KafkaOptions, parse_kafka_url

        bus: Any = KafkaBus(KafkaOptions(parse_kafka_url(bus_url), partitions=partitions, client_id="bench"))
    else:
        bus = RedisBus(aioredis.from_url(bus_url), shards=partitions)  # its shards, split as the aggregator does
    in_flight: set[asyncio.Task[Any]] = set()
    rng = random.Random(7)
    state = []
    for i in hosts:
        host = f"bench-host-{i:05d}"
        ids = [series_id(host, name, attrs) for name, attrs, _, _ in kinds]
        # Values that sit still, ~1% of them above 99: the shape of a healthy fleet with a few alerts.
        base = [rng.random() * 100.0 for _ in kinds]
        state.append((i, host, uuid.uuid4().hex, ids, base))
    sent = 0
    seqs = dict.fromkeys(hosts, 0)
    # Each host at its own offset in the interval, as collectors started at different times.
    schedule = sorted((t0 + interval * i / total, k) for k, (i, *_ ) in enumerate(state))
    rnd = 0
    while True:
        for due, k in schedule:
            due += rnd * interval
            if due >= stop_at:
                await asyncio.gather(*in_flight)
                await bus.close()
                conn.send(sent)
                return
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            i, host, session, ids, base = state[k]
            seqs[i] += 1
            now = time.time_ns() // 1_000_000
            ev = events_pb2.SamplesEvent(host_id=host, session_id=session, seq=seqs[i], stored_unix_ms=now)
            if seqs[i] == 1:
                for sid, (name, attrs, unit, kind) in zip(ids, kinds, strict=True):
                    ev.series.add(id=sid, name=name, attributes=attrs, unit=unit, kind=kind)
            ev.frames.add(time_unix_ms=now, series_ids=ids,
                          values=[b + rng.uniform(-0.3, 0.3) for b in base])
            # One batch to an entry: the aggregator groups those that arrive within its live linger.
            payload = events_pb2.SamplesEvents(events=[ev]).SerializeToString()
            if bus.partitioned:
                # Not awaited one by one: the producer batches what waits (as the aggregator's publish_many).
                task = asyncio.create_task(bus.publish(SAMPLES, payload, key=host))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            else:
                await bus.publish(SAMPLES, payload)
            sent += 1
        rnd += 1


async def kafka_backlog(stack: Stack, group: str) -> tuple[int, int]:
    """(messages the group has not committed, 0): Kafka does not tell delivered from undelivered."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from sysmon.core.bus.kafka import parse_kafka_url

    servers = parse_kafka_url(stack.bus_env["SYSMON_BUS_URL"])
    topic = "sysmon.samples"
    # Not subscribed, so not a member: it only asks the group's coordinator what was committed.
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        ends = await consumer.end_offsets(parts)
        behind = 0
        for tp in parts:
            behind += ends[tp] - (await consumer.committed(tp) or 0)
        return behind, 0
    finally:
        await consumer.stop()


async def backlog(redis_url: str, group: str, shards: int = 1) -> tuple[int, int]:
    """(entries not yet delivered to the group, delivered but not acknowledged), over the samples
    stream or its shards."""
    import redis.asyncio as aioredis

    from sysmon.core.bus import SAMPLES, shard_key, stream_key

    r = aioredis.from_url(redis_url)
    undelivered = pending = 0
    try:
        for key in [shard_key(SAMPLES, p) for p in range(shards)] if shards > 1 else [stream_key(SAMPLES)]:
            groups = await r.xinfo_groups(key)
            g = next(x for x in groups if (x["name"].decode() if isinstance(x["name"], bytes) else x["name"]) == group)
            last = g["last-delivered-id"]
            last = last.decode() if isinstance(last, bytes) else last
            undelivered += len(await r.xrange(key, min=f"({last}", max="+", count=100_000))
            pending += int(g["pending"])
        return undelivered, pending
    finally:
        await r.aclose()


def summed_metrics(alerts: list[AlertsProcess]) -> dict[str, float]:
    """The replicas' /metrics added up (gauges too: firing and pending alerts are each one's own)."""
    out: dict[str, float] = {}
    for a in alerts:
        for k, v in a.metrics().items():
            out[k] = out.get(k, 0.0) + v
    return out


async def run_throughput_replicas(args: argparse.Namespace) -> dict[str, Any]:
    """One run per replica count, and the figures side by side."""
    runs = {n: await run_throughput(args, n, json_line=len(args.replicas) == 1) for n in args.replicas}
    if len(runs) == 1:
        return next(iter(runs.values()))
    first = runs[args.replicas[0]]
    compared = ("evaluations_per_s", "events_per_s", "alerts_cpu_pct", "cpu_us_per_evaluation", "lag_max_s",
                "drain_s", "alerts_rss_max_mib")
    rows: list[Any] = [f"replicas {' / '.join(map(str, runs))} on the {args.bus} bus (same load, one after the other)"]
    last = runs[args.replicas[-1]]
    for name in compared:
        ratio = last[name] / first[name] if first[name] else math.nan
        side_by_side = "  ".join(f"{n}: {fmt(r[name])}" for n, r in runs.items())
        rows.append((name, f"{side_by_side}  ratio {fmt(ratio, digits=2)}"))
    rows.append(("keeps up", "  ".join(f"{n}: {r['keeps_up']}" for n, r in runs.items())))
    figures = {"bench": "alerts-throughput-replicas", "bus": args.bus, "rules": args.rules, "hosts": args.hosts,
               "runs": {str(n): {k: r[k] for k in (*compared, "keeps_up", "replica_events_per_s")}
                        for n, r in runs.items()}}
    print_report("sysmon alerts benchmark: throughput by replicas", rows, figures)
    return figures


async def run_throughput(args: argparse.Namespace, replicas: int = 1, json_line: bool = True) -> dict[str, Any]:
    shards = 1
    if args.bus == "redis":
        shards = args.redis_shards or (REDIS_SHARDS if replicas > 1 else 1)
    stack = Stack(args.data_dir, keep=args.keep, bus=args.bus, redis_shards=shards)
    share = stack.bus_partitions if args.bus == "kafka" else shards
    replicas_running: list[AlertsProcess] = []
    procs: list[mp.Process] = []
    try:
        print(f"data dir {stack.data_dir}; starting PostgreSQL, Redis, the aggregator...", flush=True)
        await asyncio.to_thread(stack.start)
        for n in range(replicas):
            replicas_running.append(AlertsProcess(stack, f"alerts-{n}", SYSMON_NO_DATA_AFTER="2m"))
            await asyncio.to_thread(replicas_running[-1].start)
        t = time.monotonic()
        await apply_rules(stack.address, throughput_rules(args.rules))
        for a in replicas_running:
            await asyncio.to_thread(wait_rules, a, args.rules)
        if replicas > 1:
            # The group settled before the load starts: a steady state is measured, not a rebalance.
            await asyncio.to_thread(wait_shared, replicas_running, share)
        print(f"{args.rules} rules applied and loaded in {time.monotonic() - t:.1f}s; "
              f"publishing {args.hosts} hosts x 60 series every {args.interval:g}s...", flush=True)
        ctx = mp.get_context("spawn")
        t0 = time.time() + 1.0
        m_start = t0 + args.warmup
        m_end = m_start + args.duration
        pipes = []
        for g in range(args.publishers):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=publisher_entry, daemon=True, args=(
                stack.bus_env.get("SYSMON_BUS_URL", stack.redis_url), list(range(g, args.hosts, args.publishers)),
                args.hosts, args.interval, t0, m_end, child, share))
            p.start()
            procs.append(p)
            pipes.append(parent)
        import psutil

        await asyncio.sleep(max(0.0, m_start - time.time()))
        m0 = await asyncio.to_thread(summed_metrics, replicas_running)
        r0 = [await asyncio.to_thread(a.metrics) for a in replicas_running]
        watched = {"redis": stack.redis_process, "postgres": stack.postmaster}
        for a in replicas_running:
            watched[a.consumer] = psutil_process(a)
        if stack.broker_process is not None:
            watched["broker"] = stack.broker_process
        for i, p in enumerate(procs):
            watched[f"publisher{i}"] = psutil.Process(p.pid)
        monitor = Monitor(watched, period=1.0, trees=("postgres", "redis")).start()
        lags = []
        while time.time() < m_end:
            await asyncio.sleep(1.0)
            with contextlib.suppress(OSError):
                lags.append(max(a.metrics().get("sysmon_alerts_lag_seconds", math.nan) for a in replicas_running))
        usage = monitor.stop()
        m1 = await asyncio.to_thread(summed_metrics, replicas_running)
        r1 = [await asyncio.to_thread(a.metrics) for a in replicas_running]
        published = sum([await asyncio.to_thread(p.recv) for p in pipes])
        # Keeping up means the backlog is about empty when the load stops.
        if stack.bus == "kafka":
            undelivered, pending = await kafka_backlog(stack, "alerts")
        else:
            undelivered, pending = await backlog(stack.redis_url, "alerts", shards)
        drained_at = time.monotonic()
        while True:
            m2 = await asyncio.to_thread(summed_metrics, replicas_running)
            if m2.get('sysmon_alerts_events_total{outcome="evaluated"}', 0) >= published or \
                    time.monotonic() - drained_at > 120:
                break
            await asyncio.sleep(0.2)
        drain_s = time.monotonic() - drained_at
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for a in replicas_running:
            await asyncio.to_thread(a.stop)
        await asyncio.to_thread(stack.stop)

    d = delta(m1, m0, "sysmon_alerts_")
    window = args.duration
    evals = d.get("sysmon_alerts_evaluations_total", 0.0)
    events = d.get('sysmon_alerts_events_total{outcome="evaluated"}', 0.0)
    key = 'sysmon_alerts_events_total{outcome="evaluated"}'
    per_replica = [(b.get(key, 0.0) - a0.get(key, 0.0)) / window for a0, b in zip(r0, r1, strict=True)]
    parts = [usage[x.consumer] for x in replicas_running]
    # The replicas as one: CPU added up, memory the largest.
    a = type(parts[0])(cpu_pct=sum(x.cpu_pct for x in parts), cpu_peak_pct=sum(x.cpu_peak_pct for x in parts),
                       rss_avg_mib=max(x.rss_avg_mib for x in parts), rss_max_mib=max(x.rss_max_mib for x in parts),
                       cpu_seconds=sum(x.cpu_seconds for x in parts))
    expected = args.rules * args.hosts / args.interval
    lag_ok = [x for x in lags if not math.isnan(x)]
    figures = {
        "bench": "alerts-throughput",
        "bus": args.bus,
        "redis_shards": shards if args.bus == "redis" else None,
        "replicas": replicas,
        "replica_events_per_s": per_replica,
        "broker_cpu_pct": usage["broker"].cpu_pct if "broker" in usage else None,
        "rules": args.rules,
        "hosts": args.hosts,
        "interval_s": args.interval,
        "duration_s": window,
        "offered_events_per_s": args.hosts / args.interval,
        "events_per_s": events / window,
        "samples_per_s": d.get("sysmon_alerts_samples_total", 0.0) / window,
        "evaluations_per_s": evals / window,
        "expected_evaluations_per_s": expected,
        "alerts_cpu_pct": a.cpu_pct,
        "alerts_cpu_peak_pct": a.cpu_peak_pct,
        "alerts_rss_max_mib": a.rss_max_mib,
        "cpu_us_per_evaluation": a.cpu_seconds / evals * 1e6 if evals else math.nan,
        "redis_cpu_pct": usage["redis"].cpu_pct,
        "postgres_cpu_pct": usage["postgres"].cpu_pct,
        "publisher_cpu_pct": sum(u.cpu_pct for k, u in usage.items() if k.startswith("publisher")),
        "machine_busy_pct_of_all_cores": monitor.machine_busy_pct,
        "lag_p50_s": percentile(lag_ok, 50),
        "lag_max_s": max(lag_ok, default=math.nan),
        "undelivered_at_end": undelivered,
        "pending_at_end": pending,
        "drain_s": drain_s,
        "transitions": sum(v for k, v in d.items() if k.startswith("sysmon_alerts_transitions_total")),
        "firing_at_end": m1.get('sysmon_alerts_active{state="firing"}', math.nan),
        "pending_alerts_at_end": m1.get('sysmon_alerts_active{state="pending"}', math.nan),
        "cores": os.cpu_count(),
    }
    keeps_up = figures["lag_max_s"] < args.interval and figures["events_per_s"] >= 0.95 * figures[
        "offered_events_per_s"]
    figures["keeps_up"] = keeps_up
    rows = [
        ("load", f"{args.rules} rules x {args.hosts} hosts, 60 series per host every {args.interval:g}s "
                 f"= {fmt(expected, digits=0)} rule evaluations/s"),
        ("measured", f"{window:g} s after {args.warmup:g} s warm-up; {replicas} alerts replica(s), {args.bus} bus"),
        *([("events/s per replica", " / ".join(fmt(x) for x in per_replica))] if replicas > 1 else []),
        "throughput",
        ("events / samples consumed per s",
         f"{fmt(figures['events_per_s'])} / {fmt(figures['samples_per_s'], digits=0)}"
         f" (offered {fmt(figures['offered_events_per_s'])} events/s)"),
        ("rule evaluations per s", fmt(figures["evaluations_per_s"], digits=0), f"{fmt(expected, digits=0)}",
         figures["evaluations_per_s"] >= 0.95 * expected),
        ("keeps up: lag behind bus p50 / max",
         f"{fmt(figures['lag_p50_s'], 's', 2)} / {fmt(figures['lag_max_s'], 's', 2)}", f"< {args.interval:g} s",
         keeps_up),
        ("backlog when the load stopped", f"{undelivered} undelivered, {pending} unacked; drained in {drain_s:.1f} s"),
        ("transitions in window / firing / pending",
         f"{figures['transitions']:.0f} / {figures['firing_at_end']:.0f} / {figures['pending_alerts_at_end']:.0f}"),
        "CPU (% of one core) and memory",
        ("alerts service CPU avg / peak(1 s)", f"{fmt(a.cpu_pct)} % / {fmt(a.cpu_peak_pct)} %"),
        ("alerts service RSS max", f"{fmt(a.rss_max_mib)} MiB"),
        ("CPU per rule evaluation", fmt(figures["cpu_us_per_evaluation"], "us", 2)),
        ("Redis / PostgreSQL / publisher CPU", f"{fmt(figures['redis_cpu_pct'])} % / "
                                               f"{fmt(figures['postgres_cpu_pct'])} % / "
                                               f"{fmt(figures['publisher_cpu_pct'])} %"),
        ("whole machine busy", f"{fmt(figures['machine_busy_pct_of_all_cores'])} % of {figures['cores']} cores"),
    ]
    if json_line:
        print_report("sysmon alerts benchmark: throughput", rows, figures)
    else:
        print_rows("sysmon alerts benchmark: throughput", rows)
    return figures


# --- main -------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    lat = sub.add_parser("latency", help="stored crossing sample -> webhook POST")
    lat.add_argument("--trials", type=int, default=200)
    lat.add_argument("--hosts", type=int, default=10, help="hosts taking turns to cross")
    lat.add_argument("--gap", type=float, default=0.02, help="seconds between trials")
    lat.add_argument("--background-hosts", type=int, default=200, help="simulated collectors keeping things busy")
    lat.add_argument("--warmup", type=float, default=10.0)
    thr = sub.add_parser("throughput", help="rules x hosts evaluated every interval")
    thr.add_argument("--rules", type=int, default=1000)
    thr.add_argument("--hosts", type=int, default=1000)
    thr.add_argument("--interval", type=float, default=5.0)
    thr.add_argument("--duration", type=float, default=60.0)
    thr.add_argument("--warmup", type=float, default=15.0)
    thr.add_argument("--publishers", type=int, default=1)
    thr.add_argument("--replicas", type=int, nargs="+", default=[1],
                     help="alerts replicas sharing the hosts; several: one run each")
    thr.add_argument("--redis-shards", type=int, default=0,
                     help=f"samples streams on the Redis bus (default: 1 for one replica, {REDIS_SHARDS} past one)")
    for s in (lat, thr):
        s.add_argument("--bus", choices=("redis", "kafka"), default="redis")
        s.add_argument("--keep", action="store_true", help="keep the data directory")
        s.add_argument("--data-dir", type=Path, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    asyncio.run(run_latency(args) if args.mode == "latency" else run_throughput_replicas(args))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
