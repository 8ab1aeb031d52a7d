"""Prometheus remote write into sysmon, flat out: samples stored per second.

    python bench/remote_write.py [--hosts 100] [--series 60] [--per-request 2000] [--senders 8]
                                 [--generators 1] [--duration 30] [--warmup 5]

Embedded PostgreSQL and Redis and an aggregator process (bench/common.py's Stack) with its HTTP
ingest listener on. Load generator processes POST WriteRequests as Prometheus's remote-write queue
does: --senders requests in flight per generator (Prometheus's shards), each of --per-request
samples, one TimeSeries per sample (labels __name__, instance, job, plus one of its own), the fleet
of --hosts targets x --series series (spread over requests by series, as Prometheus's shards do,
or --layout host: each host's together) scraped round after round on a virtual clock 5 s apart from
now-20h, so that every sample is new. Bodies are encoded by hand (labels pre-encoded, a sample is
a few bytes) and snappy-compressed with cramjam, so that the generator costs little next to the
aggregator. A request is answered only after its samples are committed (2xx); anything else is
counted as an error.

Figures: samples stored per second (the aggregator's sysmon_aggregator_samples_stored_total over
the measured window), request latency p50/p99, CPU of the aggregator, PostgreSQL and the
generators. Compare with bench/ingest.py --mode flatout (native gRPC Push) on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Monitor, Stack, delta, fmt, percentile, print_report, scrape, summed

STEP_MS = 5_000


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(num: int, payload: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def _label(name: str, value: str) -> bytes:
    return _field(1, _field(1, name.encode()) + _field(2, value.encode()))


def series_labels(hosts: int, series: int, generator: int) -> list[bytes]:
    """Each series' encoded labels (sorted by name, as Prometheus sends them)."""
    out = []
    for h in range(hosts):
        instance = f"g{generator}-host-{h:04d}:9100"
        for s in range(series):
            name = f"bench_metric_{s % 20}_total" if s % 2 else f"bench_gauge_{s % 20}"
            out.append(_label("__name__", name) + _label("instance", instance) + _label("job", "node")
                       + _label("series", str(s)))
    return out


def body(labels: list[bytes], t_ms: int, value: float) -> bytes:
    import cramjam

    sample = _field(2, b"\x09" + struct.pack("<d", value) + b"\x10" + _varint(t_ms))
    req = b"".join(_field(1, lb + sample) for lb in labels)
    return bytes(cramjam.snappy.compress_raw(req))


async def _generate(url: str, labels: list[bytes], per_request: int, senders: int, until: float,
                    out: mp.Queue, shuffle: bool) -> None:
    import httpx

    start_ms = int(time.time() * 1000) - 20 * 3600_000
    if shuffle:
        # Prometheus shards by series hash: a host's samples of one scrape are spread over requests.
        import random

        labels = labels[:]
        random.Random(1).shuffle(labels)
    chunks = [labels[i:i + per_request] for i in range(0, len(labels), per_request)]
    work: asyncio.Queue[tuple[int, int]] = asyncio.Queue(maxsize=senders * 2)
    latencies: list[float] = []
    sent = errors = 0

    async def produce() -> None:
        rnd = 0
        while time.monotonic() < until:
            for c in range(len(chunks)):
                await work.put((rnd, c))
            rnd += 1
        for _ in range(senders):
            await work.put((-1, -1))

    async def send(client: httpx.AsyncClient) -> None:
        nonlocal sent, errors
        headers = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
                   "X-Prometheus-Remote-Write-Version": "0.1.0"}
        while True:
            rnd, c = await work.get()
            if rnd < 0:
                return
            data = body(chunks[c], start_ms + rnd * STEP_MS, float(rnd))
            t0 = time.perf_counter()
            r = await client.post(url, content=data, headers=headers)
            latencies.append(time.perf_counter() - t0)
            if r.status_code // 100 == 2:
                sent += len(chunks[c])
            else:
                errors += 1

    limits = httpx.Limits(max_connections=senders, max_keepalive_connections=senders)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        await asyncio.gather(produce(), *(send(client) for _ in range(senders)))
    out.put({"sent": sent, "errors": errors, "latencies": latencies})


def generator(url: str, hosts: int, series: int, per_request: int, senders: int, seconds: float, index: int,
              out: mp.Queue, shuffle: bool) -> None:
    asyncio.run(_generate(url, series_labels(hosts, series, index), per_request, senders, time.monotonic() + seconds,
                          out, shuffle))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hosts", type=int, default=100)
    p.add_argument("--series", type=int, default=60)
    p.add_argument("--per-request", type=int, default=2000, help="samples per request (max_samples_per_send)")
    p.add_argument("--senders", type=int, default=8, help="requests in flight per generator (shards)")
    p.add_argument("--generators", type=int, default=1)
    p.add_argument("--layout", choices=("hash", "host"), default="hash",
                   help="hash: series spread over requests as Prometheus's shards do; host: a host's series together")
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--warmup", type=float, default=5.0)
    a = p.parse_args()
    from sysmon.core.embedded import free_port

    http_port = free_port()
    with Stack(aggregator_env={"SYSMON_HTTP_LISTEN": f"127.0.0.1:{http_port}"}) as stack:
        stack.start()
        url = f"http://127.0.0.1:{http_port}/api/v1/write"
        ctx = mp.get_context("spawn")
        out: mp.Queue = ctx.Queue()
        total = a.warmup + a.duration
        gens = [ctx.Process(target=generator, args=(url, a.hosts, a.series, a.per_request, a.senders, total, i, out,
                                                             a.layout == "hash"))
                for i in range(a.generators)]
        for g in gens:
            g.start()
        time.sleep(a.warmup)
        import psutil

        mon = Monitor({"aggregator": stack.aggregator_process, "postgres": stack.postmaster,
                       **{f"generator-{i}": psutil.Process(g.pid) for i, g in enumerate(gens)}},
                      trees=["postgres"]).start()
        before = scrape(stack.metrics_url)
        t0 = time.monotonic()
        time.sleep(a.duration)
        after = scrape(stack.metrics_url)
        elapsed = time.monotonic() - t0
        stats = mon.stop()
        results = [out.get(timeout=120) for _ in gens]
        for g in gens:
            g.join(30)
        d = delta(after, before, "sysmon_aggregator_")
        stored = summed(d, "sysmon_aggregator_samples_stored_total")
        rate = stored / elapsed
        lat = sorted(x for r in results for x in r["latencies"])
        errors = sum(r["errors"] for r in results)
        gen_cpu = sum(s.cpu_pct for n, s in stats.items() if n.startswith("generator"))
        figures = {
            "samples_per_s": rate, "request_p50_ms": percentile(lat, 50) * 1000,
            "request_p99_ms": percentile(lat, 99) * 1000, "errors": errors,
            "aggregator_cpu_pct": stats["aggregator"].cpu_pct, "postgres_cpu_pct": stats["postgres"].cpu_pct,
            "generator_cpu_pct": gen_cpu, "aggregator_rss_mib": stats["aggregator"].rss_max_mib,
            "hosts": a.hosts * a.generators, "series": a.series, "per_request": a.per_request,
            "senders": a.senders * a.generators, "layout": a.layout, "duration_s": elapsed,
            "machine_busy_pct": mon.machine_busy_pct,
        }
        print_report("Prometheus remote write, flat out", [
            ("samples stored", f"{fmt(rate, 'samples/s', 0)} ({fmt(stored, '', 0)} in {elapsed:.0f} s)"),
            ("requests", f"{len(lat):,} ({a.per_request} samples each), {errors} not 2xx"),
            ("request latency p50 / p99", f"{fmt(figures['request_p50_ms'], 'ms')} / "
                                          f"{fmt(figures['request_p99_ms'], 'ms')}"),
            ("aggregator CPU / RSS", f"{fmt(figures['aggregator_cpu_pct'], '%')} / "
                                     f"{fmt(figures['aggregator_rss_mib'], 'MiB')}"),
            ("PostgreSQL CPU", fmt(figures["postgres_cpu_pct"], "%")),
            ("generator CPU", fmt(gen_cpu, "%")),
            ("machine busy", fmt(mon.machine_busy_pct, "%")),
        ], figures)


if __name__ == "__main__":
    main()
