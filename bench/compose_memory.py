"""Does the demo fit a t2.small (2 GiB)? Memory of the compose stack's processes under 10 hosts.

    python bench/compose_memory.py [--hosts 10] [--interval 5] [--warmup 60] [--duration 120]

The processes docker-compose.yml runs, each as its own process here, with the compose file's
settings: PostgreSQL (embedded, tuned as the compose file tunes TimescaleDB: shared_buffers 128MB,
max_connections 100), Redis (the hot tier and the bus), `sysmon aggregator`, `sysmon gateway`,
`sysmon alerts` and `sysmon agent` for the instance itself, all with a token as in the compose
file. The load: --hosts collectors in all (the instance's own plus remote ones; only the instance's
counts, the others run elsewhere), every --interval seconds, and a dashboard's worth of reads on
the gateway (the host list, each host, an hour of CPU for every host) every 5 s.

Memory is sampled every 2 s after the warm-up: RSS and PSS (proportional set size: shared pages
split between the processes that map them, so PostgreSQL's shared buffers count once) of each
process tree. A container's memory limit counts about the PSS of its processes (plus page cache,
which the kernel reclaims before it kills), so the peaks of PSS are the figures for mem_limit.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil

from bench.common import MiB, Stack, clean_env, free_port, print_report, stop_process

TOKEN = "bench-compose-memory-token-0123456789"
# What docker-compose.yml gives TimescaleDB (its command line), so the figures are the compose file's.
PG_TUNING = {
    "shared_buffers": "128MB",
    "max_connections": "100",
    "work_mem": "8MB",
    "maintenance_work_mem": "64MB",
    "max_wal_size": "1GB",
}
T2_SMALL_MIB = 2048
# Ubuntu 24.04 with the Docker daemon, containerd and the SSM agent, idle (what is not the stack).
OS_MIB = 350


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", type=int, default=10, help="collectors in all, the instance's own included")
    p.add_argument("--interval", type=float, default=5.0, help="collection interval, seconds")
    p.add_argument("--warmup", type=float, default=60.0, help="seconds before measuring")
    p.add_argument("--duration", type=float, default=120.0, help="measured seconds")
    p.add_argument("--keep", action="store_true", help="keep the data directory")
    return p.parse_args(argv)


def tree_memory(root: psutil.Process) -> tuple[float, float]:
    """(RSS, PSS) of a process and its descendants, MiB."""
    rss = pss = 0
    for p in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            m = p.memory_full_info()
            rss += m.rss
            pss += m.pss
    return rss / MiB, pss / MiB


class Service:
    def __init__(self, stack: Stack, name: str, command: list[str], env: dict[str, str]):
        self.name = name
        self.log_path = stack.data_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "sysmon", *command], cwd=stack.data_dir,
                                     env=clean_env(SYSMON_LOG_LEVEL="warning", **env),
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_http(self, url: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}\n{self.log_tail()}")
            with contextlib.suppress(OSError, urllib.error.URLError), urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready within {timeout}s\n{self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, n: int = 2000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


def dashboard_reads(base: str, hosts: list[str], stop: threading.Event, errors: list[str]) -> None:
    """What a dashboard open on the overview and a host view asks for, every 5 s."""
    def get(path: str) -> None:
        req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {TOKEN}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                r.read()
        except (OSError, urllib.error.URLError) as e:
            errors.append(f"{path}: {e}")

    while not stop.is_set():
        get("/api/v1/hosts")
        for h in hosts:
            get(f"/api/v1/hosts/{h}")
        get("/api/v1/query?metric=system.cpu.utilization&match=cpu%3Dtotal&start=now-1h")
        get("/api/v1/query?metric=system.memory.utilization&start=now-1h&sum_by=host")
        stop.wait(5.0)


def run(args: argparse.Namespace) -> dict:
    stack = Stack(keep=args.keep, pg_tuning=PG_TUNING, aggregator_env={"SYSMON_TOKEN": TOKEN})
    services: list[Service] = []
    stop_reads = threading.Event()
    read_errors: list[str] = []
    samples: dict[str, list[tuple[float, float]]] = {}
    try:
        print(f"data dir {stack.data_dir}; PostgreSQL, Redis, aggregator...", flush=True)
        stack.start()
        conn = {"SYSMON_POSTGRES_URL": stack.dsn, "SYSMON_REDIS_URL": stack.redis_url, "SYSMON_TOKEN": TOKEN}
        gw_port, alerts_port = free_port(), free_port()
        gateway = Service(stack, "gateway", ["gateway"], {**conn, "SYSMON_LISTEN": f"127.0.0.1:{gw_port}"})
        alerts = Service(stack, "alerts", ["alerts"], {**conn, "SYSMON_LISTEN": f"127.0.0.1:{alerts_port}",
                                                     "SYSMON_AGGREGATOR": stack.address})
        services += [gateway, alerts]
        gateway.wait_http(f"http://127.0.0.1:{gw_port}/readyz")
        alerts.wait_http(f"http://127.0.0.1:{alerts_port}/readyz")
        hosts = [f"host-{i:02d}" for i in range(args.hosts)]
        agents = [Service(stack, f"agent-{h}", ["agent"], {
            "SYSMON_AGGREGATOR": stack.address, "SYSMON_TOKEN": TOKEN, "SYSMON_HOST_ID": h,
            "SYSMON_INTERVAL": f"{args.interval:g}s", "SYSMON_METRICS_LISTEN": "",
        }) for h in hosts]
        services += agents
        _wait_hosts(f"http://127.0.0.1:{gw_port}", set(hosts), timeout=60 + 3 * args.interval)
        reader = threading.Thread(target=dashboard_reads, args=(f"http://127.0.0.1:{gw_port}", hosts, stop_reads,
                                                                read_errors), daemon=True)
        reader.start()
        print(f"{args.hosts} collectors every {args.interval:g}s and dashboard reads; warm-up {args.warmup:g}s...",
              flush=True)
        time.sleep(args.warmup)
        procs = {
            "postgresql": stack.postmaster,
            "redis": stack.redis_process,
            "aggregator": stack.aggregator_process,
            "gateway": psutil.Process(gateway.proc.pid),
            "alerts": psutil.Process(alerts.proc.pid),
            "collector": psutil.Process(agents[0].proc.pid),
        }
        samples = {name: [] for name in procs}
        print(f"measuring {args.duration:g}s...", flush=True)
        deadline = time.monotonic() + args.duration
        while time.monotonic() < deadline:
            for s in services:
                if s.proc.poll() is not None:
                    raise RuntimeError(f"{s.name} exited with {s.proc.returncode}\n{s.log_tail()}")
            for name, p in procs.items():
                samples[name].append(tree_memory(p))
            time.sleep(2.0)
        redis_info = _redis_used_memory(stack.redis_url)
    finally:
        stop_reads.set()
        for s in services:
            with contextlib.suppress(Exception):
                s.stop()
        stack.stop()

    peak = {name: (max(r for r, _ in v), max(p for _, p in v)) for name, v in samples.items()}
    total_pss = sum(p for _, p in peak.values())
    total_rss = sum(r for r, _ in peak.values())
    fits = total_pss + OS_MIB < T2_SMALL_MIB * 0.75
    figures = {
        "bench": "compose_memory",
        "hosts": args.hosts,
        "interval_s": args.interval,
        "duration_s": args.duration,
        **{f"{n}_rss_peak_mib": r for n, (r, _) in peak.items()},
        **{f"{n}_pss_peak_mib": p for n, (_, p) in peak.items()},
        "stack_pss_peak_mib": total_pss,
        "stack_rss_peak_mib": total_rss,
        "redis_used_memory_mib": redis_info,
        "dashboard_read_errors": len(read_errors),
        "fits_t2_small": fits,
    }
    rows: list = [
        ("load", f"{args.hosts} collectors every {args.interval:g}s; dashboard reads every 5 s"),
        ("measured", f"{args.duration:g} s after {args.warmup:g} s warm-up, every 2 s"),
        "peak memory per process tree (MiB): RSS, PSS",
        *[(n, f"{r:7.1f}  {p:7.1f}") for n, (r, p) in peak.items()],
        ("the stack (sum of peaks)", f"{total_rss:7.1f}  {total_pss:7.1f}"),
        ("Redis used_memory", f"{redis_info:.1f} MiB"),
        ("dashboard read errors", str(len(read_errors)) + (f" (first: {read_errors[0]})" if read_errors else "")),
        ("t2.small", f"{T2_SMALL_MIB} MiB - ~{OS_MIB} MiB for the OS and Docker = {T2_SMALL_MIB - OS_MIB} MiB",
         "stack PSS + OS < 75 % of 2 GiB", fits),
    ]
    print_report("compose stack memory (does the demo fit a t2.small?)", rows, figures)
    return figures


def _wait_hosts(base: str, hosts: set[str], timeout: float) -> None:
    """Until every collector's host is listed (the dashboard's reads then all find their host)."""
    import json

    deadline = time.monotonic() + timeout
    req = urllib.request.Request(base + "/api/v1/hosts", headers={"Authorization": f"Bearer {TOKEN}"})
    while True:
        with contextlib.suppress(OSError, urllib.error.URLError), urllib.request.urlopen(req, timeout=5) as r:
            if hosts <= {h["host"] for h in json.load(r)["hosts"]}:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"not every collector's host is listed within {timeout:g}s")
        time.sleep(0.5)


def _redis_used_memory(url: str) -> float:
    import redis

    r = redis.Redis.from_url(url)
    try:
        return r.info("memory")["used_memory"] / MiB
    finally:
        r.close()


if __name__ == "__main__":
    run(parse_args())
