"""One lightweight process that serves a fleet of Prometheus targets, for bench/ingest.py --compare-prometheus.

    python bench/prom_exporter.py --targets 1000 --series 60 [--gzip]

Every target is a port of its own on 127.0.0.1 (as 1,000 hosts' node exporters would be): one
asyncio process, one listening socket per target, HTTP/1.1 with keep-alive. A target answers
`GET /metrics` with the text exposition format: the same `--series` series as bench/ingest.py's
simulated hosts send (realistic_series(), named as the OpenTelemetry-to-Prometheus naming rules
name them: dots to underscores, the unit as a suffix) and the same values, which change between
scrapes the same way: the n-th scrape of a target gets value set n mod 64 (value_variants()). The 64
responses are rendered once at start (plain, and gzip for --gzip when the scraper accepts it), so
that answering a scrape is a dictionary look-up and a write.

Prints one JSON line when listening, {"ports": [...]} in target order, and on SIGTERM or SIGINT one
more, {"requests": n, "gzip": n, "bad": n, "connections": n}, then exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import resource
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.ingest import VALUE_VARIANTS, realistic_series, value_variants

UNITS = {"By": "bytes", "1": "ratio", "s": "seconds"}


def prom_metric_name(name: str, unit: str) -> str:
    """OpenTelemetry name and unit as Prometheus names them: system.memory.usage + By -> system_memory_usage_bytes."""
    base = name.replace(".", "_")
    per = ""
    if unit.endswith("/s"):
        unit, per = unit[:-2], "per_second"
    if unit.startswith("{"):  # an annotation, e.g. {thread}: no suffix
        unit = ""
    suffix = "_".join(x for x in (UNITS.get(unit, unit), per) if x)
    return f"{base}_{suffix}" if suffix and not base.endswith(suffix) else base


def exposition(n_series: int, values: list[float]) -> bytes:
    """One target's /metrics body: each family's HELP and TYPE, then all its samples together."""
    families: dict[str, list[str]] = {}
    for (name, attrs, unit, _kind), v in zip(realistic_series(n_series), values, strict=True):
        metric = prom_metric_name(name, unit)
        lines = families.get(metric)
        if lines is None:
            # Gauges: the collector sends rates (By/s...) as values, not cumulative counters.
            lines = families[metric] = [f"# HELP {metric} {name} ({unit}), as the sysmon collector reports it.",
                                        f"# TYPE {metric} gauge"]
        labels = ",".join(f'{k}="{val}"' for k, val in attrs.items())
        lines.append(f"{metric}{{{labels}}} {v!r}" if labels else f"{metric} {v!r}")
    return ("\n".join(line for lines in families.values() for line in lines) + "\n").encode()


def responses(n_series: int, use_gzip: bool) -> tuple[list[bytes], list[bytes]]:
    """The 64 complete HTTP responses (headers + body), plain and gzip-encoded (empty without --gzip)."""
    head = ("HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
            "Content-Length: {n}\r\n{extra}\r\n")
    plain, gz = [], []
    for values in value_variants(n_series):
        body = exposition(n_series, values)
        plain.append(head.format(n=len(body), extra="").encode() + body)
        if use_gzip:
            zbody = gzip.compress(body, compresslevel=6, mtime=0)
            gz.append(head.format(n=len(zbody), extra="Content-Encoding: gzip\r\n").encode() + zbody)
    return plain, gz


NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\nnot found\n"


class Fleet:
    def __init__(self, n_targets: int, n_series: int, use_gzip: bool):
        self.plain, self.gz = responses(n_series, use_gzip)
        self.scrapes = [0] * n_targets
        self.requests = self.gzip_requests = self.bad = self.connections = 0


class Target(asyncio.Protocol):
    """One target's connection: answers each request in the buffer (HTTP/1.1, no request bodies)."""

    def __init__(self, fleet: Fleet, index: int):
        self.fleet = fleet
        self.index = index
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.fleet.connections += 1

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head, self.buf = self.buf[:end], self.buf[end + 4:]
            self.respond(head)
        if len(self.buf) > 65536:
            self.transport.close()

    def respond(self, head: bytes) -> None:
        f = self.fleet
        assert self.transport is not None
        if not head.startswith(b"GET /metrics"):
            f.bad += 1
            self.transport.write(NOT_FOUND)
            return
        f.requests += 1
        n = f.scrapes[self.index] = f.scrapes[self.index] + 1
        lower = head.lower()
        if f.gz and b"gzip" in lower:
            f.gzip_requests += 1
            self.transport.write(f.gz[n % VALUE_VARIANTS])
        else:
            self.transport.write(f.plain[n % VALUE_VARIANTS])
        if b"connection: close" in lower:
            self.transport.close()


async def serve(n_targets: int, n_series: int, use_gzip: bool) -> None:
    # A listening socket per target, plus the scraper's connection to each.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * n_targets + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    fleet = Fleet(n_targets, n_series, use_gzip)
    loop = asyncio.get_running_loop()
    servers = []
    for i in range(n_targets):
        servers.append(await loop.create_server(lambda i=i: Target(fleet, i), "127.0.0.1", 0, backlog=64))
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    print(json.dumps({"ports": ports, "response_bytes": len(fleet.plain[0]),
                      "gzip_response_bytes": len(fleet.gz[0]) if fleet.gz else None}), flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for s in servers:
        s.close()
    print(json.dumps({"requests": fleet.requests, "gzip": fleet.gzip_requests, "bad": fleet.bad,
                      "connections": fleet.connections}), flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", type=int, default=1000)
    p.add_argument("--series", type=int, default=60, help="series per target")
    p.add_argument("--gzip", action="store_true", help="gzip responses when the scraper accepts it")
    args = p.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.targets, args.series, args.gzip))


if __name__ == "__main__":
    main()
