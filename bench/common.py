"""What the benchmarks share: the server stack, process accounting, /metrics scraping, the report.

The stack is the real thing on this machine: embedded PostgreSQL and Redis (default tuning) in a
fresh data directory, and the aggregator as its own process (`python -m sysmon aggregator`) so
that its CPU and memory are measured apart from the load that drives it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any SYSMON_* variable of the caller's, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYSMON_")}
    env.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
    env.update(extra)
    return env


def prometheus_tool(name: str) -> str:
    """The path of a tool of Debian's prometheus package (`prometheus`, `promtool`), the package
    installed when the tool is missing."""
    path = shutil.which(name)
    if path is None:
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        print(f"installing Debian's prometheus package for {name} ...", flush=True)
        subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True)
        subprocess.run([*sudo, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-qq",
                        "prometheus"], check=True)
        path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} not found after installing Debian's prometheus package")
    return path


def prometheus_version(binary: str) -> str:
    """The version a Prometheus tool prints: "prometheus, version 2.42.0+ds (branch: ...)", and
    "promtool, version ..." alike, give "2.42.0+ds"."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    first = (out.stdout or out.stderr).splitlines()[0]
    return first.split("version", 1)[-1].strip().split()[0]


def free_port() -> int:
    from sysmon.core.embedded import free_port as _free_port

    return _free_port()


# --- the server stack ---------------------------------------------------------------------------------


def stop_process(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    """SIGTERM, as a service manager stops a service; SIGKILL if it has not exited within timeout."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class Stack:
    """Embedded PostgreSQL + Redis and an aggregator subprocess, all under one data directory."""

    def __init__(self, data_dir: Path | None = None, *, keep: bool = False, log_level: str = "warning",
                 aggregator_cmd: Sequence[str] | None = None, aggregator_env: dict[str, str] | None = None,
                 pg_tuning: dict[str, str] | None = None, bus: str = "redis", bus_partitions: int = 12,
                 redis_shards: int = 1):
        self.pg_tuning = pg_tuning  # None: the embedded server's defaults
        self.data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="sysmon-bench-"))
        self.keep = keep
        self.log_level = log_level
        # What runs the aggregator (default: this interpreter's `-m sysmon aggregator`) and extra
        # SYSMON_* settings for it: for comparing a candidate change or a setting against the default.
        self.aggregator_cmd = list(aggregator_cmd or [sys.executable, "-m", "sysmon", "aggregator"])
        self.aggregator_env = dict(aggregator_env or {})
        self.pg = None
        self.redis = None
        self.dsn = ""
        self.redis_url = ""
        self.address = ""
        self.metrics_url = ""
        self.aggregator: subprocess.Popen[bytes] | None = None
        self._agg_log = None
        # The bus: Redis (the default), or Kafka on an embedded tansu broker.
        self.bus = bus
        self.bus_partitions = bus_partitions
        self.kafka = None
        # On Redis, samples streams split by host (alerts replicas share them by lease); 1: one stream.
        self.redis_shards = redis_shards
        self.bus_env: dict[str, str] = {"SYSMON_BUS_REDIS_SHARDS": str(redis_shards)} if redis_shards > 1 else {}

    # Processes, for accounting -------------------------------------------------------------------

    @property
    def postmaster(self) -> psutil.Process:
        assert self.pg is not None
        pid = int((self.pg.pgdata / "postmaster.pid").read_text().split()[0])
        return psutil.Process(pid)

    @property
    def redis_process(self) -> psutil.Process:
        assert self.redis is not None
        assert self.redis._proc is not None
        return psutil.Process(self.redis._proc.pid)

    @property
    def broker_process(self) -> psutil.Process | None:
        """The Kafka broker, on the Kafka bus."""
        return psutil.Process(self.kafka.pid) if self.kafka is not None and self.kafka.pid else None

    @property
    def aggregator_process(self) -> psutil.Process:
        assert self.aggregator is not None
        return psutil.Process(self.aggregator.pid)

    # Start and stop ------------------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> None:
        from sysmon.core.embedded import EmbeddedPostgres, EmbeddedRedis, runtime_env

        runtime_env()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.pg = EmbeddedPostgres(self.data_dir, tuning=self.pg_tuning)
        self.dsn = self.pg.start()
        self.redis = EmbeddedRedis(self.data_dir)
        self.redis_url = self.redis.start()
        if self.bus == "kafka":
            from sysmon.core.embedded import EmbeddedTansu

            self.kafka = EmbeddedTansu(self.data_dir / "tansu.log")
            self.bus_env = {"SYSMON_BUS_URL": self.kafka.start(), "SYSMON_BUS_PARTITIONS": str(self.bus_partitions),
                            # tansu holds a stopped member's partitions until its session expires.
                            "SYSMON_BUS_SESSION_TIMEOUT": "3s"}
        port, mport = free_port(), free_port()
        self.address = f"127.0.0.1:{port}"
        self.metrics_url = f"http://127.0.0.1:{mport}/metrics"
        env = clean_env(
            SYSMON_POSTGRES_URL=self.dsn,
            SYSMON_REDIS_URL=self.redis_url,
            SYSMON_LISTEN=self.address,
            SYSMON_METRICS_LISTEN=f"127.0.0.1:{mport}",
            SYSMON_LOG_LEVEL=self.log_level,
            **self.bus_env,
            **self.aggregator_env,
        )
        self._agg_log = open(self.data_dir / "aggregator.log", "wb")  # noqa: SIM115 - closed in stop()
        self.aggregator = subprocess.Popen(
            self.aggregator_cmd, env=env, cwd=self.data_dir,
            stdin=subprocess.DEVNULL, stdout=self._agg_log, stderr=subprocess.STDOUT,
        )
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        """gRPC health SERVING, then PostgreSQL migrated and accepting writes (storage_up 1)."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while True:
                self._check_alive()
                try:
                    resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"aggregator not SERVING within {timeout}s\n{self.aggregator_log_tail()}")
                time.sleep(0.2)
        while True:
            self._check_alive()
            with contextlib.suppress(OSError):
                if scrape(self.metrics_url).get("sysmon_aggregator_storage_up") == 1:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"aggregator storage not up within {timeout}s\n{self.aggregator_log_tail()}")
            time.sleep(0.2)

    def _check_alive(self) -> None:
        if self.aggregator is not None and self.aggregator.poll() is not None:
            raise RuntimeError(f"aggregator exited with {self.aggregator.returncode}\n{self.aggregator_log_tail()}")

    def aggregator_log_tail(self, n: int = 3000) -> str:
        p = self.data_dir / "aggregator.log"
        return p.read_text(errors="replace")[-n:] if p.exists() else ""

    def stop_aggregator(self, timeout: float = 30.0) -> int | None:
        if self.aggregator is None:
            return None
        rc = stop_process(self.aggregator, timeout)
        if self._agg_log is not None:
            self._agg_log.close()
            self._agg_log = None
        return rc

    def stop(self) -> None:
        self.stop_aggregator()
        if self.kafka is not None:
            self.kafka.stop()
        if self.redis is not None:
            self.redis.stop()
        if self.pg is not None:
            self.pg.stop()
        if not self.keep:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- process accounting ---------------------------------------------------------------------------


def tree_cpu_seconds(proc: psutil.Process) -> float:
    """CPU seconds used by `proc`, its live descendants, and every child already reaped.

    A child's time moves into its parent's children_user/children_system when it is waited for,
    so this total only grows, whatever processes start and end between two readings (PostgreSQL's
    parallel and autovacuum workers, a Redis rewrite fork).
    """
    def own(p: psutil.Process) -> float:
        t = p.cpu_times()
        return t.user + t.system + t.children_user + t.children_system

    total = own(proc)
    with contextlib.suppress(psutil.NoSuchProcess):
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                total += own(child)
    return total


def system_busy() -> tuple[float, float]:
    """(busy CPU seconds, total CPU seconds) of the whole machine, all cores."""
    t = psutil.cpu_times()
    total = sum(t)
    idle = t.idle + getattr(t, "iowait", 0.0)
    return total - idle, total


@dataclass
class ProcStats:
    cpu_pct: float = 0.0  # % of one core, over the whole window
    cpu_peak_pct: float = 0.0  # highest over one sampling period
    rss_avg_mib: float = 0.0
    rss_max_mib: float = 0.0
    cpu_seconds: float = 0.0


@dataclass
class _Track:
    proc: psutil.Process
    tree: bool
    times: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)
    gone: bool = False


class Monitor:
    """Samples CPU (whole process trees) and RSS (the main process) of named processes in a thread.

    start() and stop() each take a reading at once, so the window is exactly [start(), stop()].
    """

    def __init__(self, procs: dict[str, psutil.Process], *, period: float = 0.5, trees: Iterable[str] = ()):
        trees = set(trees)
        self.tracks = {name: _Track(p, name in trees) for name, p in procs.items()}
        self.period = period
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sys: list[tuple[float, float]] = []
        self.started = self.stopped = 0.0

    def _sample(self) -> None:
        now = time.monotonic()
        for t in self.tracks.values():
            if t.gone:
                continue
            try:
                cpu = tree_cpu_seconds(t.proc) if t.tree else sum(t.proc.cpu_times()[:2])
                rss = t.proc.memory_info().rss
            except psutil.NoSuchProcess:
                t.gone = True
                continue
            t.times.append(now)
            t.cpu.append(cpu)
            t.rss.append(rss)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self._sample()

    def start(self) -> Monitor:
        self.started = time.monotonic()
        self._sys.append(system_busy())
        self._sample()
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict[str, ProcStats]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        self._sys.append(system_busy())
        self.stopped = time.monotonic()
        return {name: self._stats(t, self.period / 2) for name, t in self.tracks.items()}

    @property
    def machine_busy_pct(self) -> float:
        """Busy share of the whole machine (all cores) over the window, in %."""
        (b0, t0), (b1, t1) = self._sys[0], self._sys[-1]
        return 100.0 * (b1 - b0) / max(t1 - t0, 1e-9)

    @staticmethod
    def _stats(t: _Track, shortest: float) -> ProcStats:
        if len(t.times) < 2:
            return ProcStats()
        elapsed = t.times[-1] - t.times[0]
        # Over whole sampling periods only: a sliver at the end says little about a peak.
        peak = max(
            ((t.cpu[i + 1] - t.cpu[i]) / (t.times[i + 1] - t.times[i])
             for i in range(len(t.times) - 1) if t.times[i + 1] - t.times[i] >= shortest),
            default=math.nan,
        )
        return ProcStats(
            cpu_pct=100.0 * (t.cpu[-1] - t.cpu[0]) / max(elapsed, 1e-9),
            cpu_peak_pct=100.0 * peak,
            rss_avg_mib=sum(t.rss) / len(t.rss) / MiB,
            rss_max_mib=max(t.rss) / MiB,
            cpu_seconds=t.cpu[-1] - t.cpu[0],
        )


# --- the aggregator's /metrics ----------------------------------------------------------------------


def scrape(url: str, timeout: float = 5.0) -> dict[str, float]:
    """Prometheus text as {'name{label="v",...}': value}; labels sorted, no braces when none."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=timeout) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = s.name
            if s.labels:
                key += "{" + ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items())) + "}"
            out[key] = s.value
    return out


def delta(after: dict[str, float], before: dict[str, float], prefix: str) -> dict[str, float]:
    """Increase of every counter sample starting with `prefix` (those that changed)."""
    out = {}
    for k, v in after.items():
        if k.startswith(prefix) and (k.endswith("_total") or "_total{" in k or "_count" in k or "_sum" in k):
            d = v - before.get(k, 0.0)
            if d:
                out[k] = d
    return out


def summed(m: dict[str, float], name: str) -> float:
    """Sum of every labelled sample of one metric name."""
    return sum(v for k, v in m.items() if k == name or k.startswith(name + "{"))


# --- figures ---------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100.0 * len(s)) - 1))
    return s[k]


def fmt(v: float, unit: str = "", digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:,.{digits}f}{(' ' + unit) if unit else ''}"


Row = str | tuple[str, str] | tuple[str, str, str, bool | None]


def print_report(title: str, rows: Sequence[Row], figures: dict) -> None:
    """A human summary block, then the same figures as one line of JSON (the last line printed)."""
    width = 34
    print()
    print("=" * 100)
    print(title)
    print("=" * 100)
    for row in rows:
        if isinstance(row, str):
            print(f"-- {row}")
            continue
        label, value, *rest = row
        line = f"  {label:<{width}} {value}"
        if rest:
            target, ok = rest
            mark = "" if ok is None else ("  PASS" if ok else "  FAIL")
            line = f"{line:<78} target {target}{mark}"
        print(line)
    print("=" * 100, flush=True)
    print(json.dumps(_jsonable(figures), sort_keys=True), flush=True)


def _jsonable(v):
    if isinstance(v, float):
        return None if math.isnan(v) or math.isinf(v) else round(v, 3)
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return v


def print_rows(title: str, rows: Sequence[Row]) -> None:
    """print_report's human block alone, without the JSON line: for one run of several whose figures
    go into a combined report (whose JSON line is then the last line printed)."""
    width = 34
    print()
    print("-" * 100)
    print(title)
    print("-" * 100)
    for row in rows:
        if isinstance(row, str):
            print(f"-- {row}")
            continue
        label, value, *rest = row
        line = f"  {label:<{width}} {value}"
        if rest:
            target, ok = rest
            mark = "" if ok is None else ("  PASS" if ok else "  FAIL")
            line = f"{line:<78} target {target}{mark}"
        print(line)
    print("-" * 100, flush=True)
