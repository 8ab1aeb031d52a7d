"""Prometheus next to sysmon at the same load: bench/ingest.py --mode steady --compare-prometheus.

    python bench/ingest.py --mode steady --compare-prometheus [--rounds 2] [--hosts 1000] [--series 60]
                           [--interval 5] [--duration 60] [--warmup 10] [--exporter-gzip]

Runs, in turn and never at once, `--rounds` times: sysmon's steady ingest run (bench/ingest.py's
run(): aggregator, PostgreSQL, Redis in a fresh data directory), then Prometheus (Debian's package,
installed when missing) in a fresh temp directory scraping the same fleet: `--hosts` targets of
`--series` series each every `--interval` (scrape timeout 0.8 x interval), served by one exporter
process (bench/prom_exporter.py: one asyncio process, a port per target, pre-rendered responses).
Our own `prometheus` process, with its own --config.file, --storage.tsdb.path and a free loopback
--web.listen-address; a system-wide Prometheus, if any, is left alone.

A Prometheus run: wait until every target is up (count(up == 1) through the HTTP API), warm up
--warmup seconds, then measure --duration seconds: Prometheus's CPU (/proc, psutil, the same
Monitor as the sysmon run) and RSS, the exporter's CPU apart (reported, not counted), samples
appended to the head (prometheus_tsdb_head_samples_appended_total from Prometheus's own /metrics:
the targets' series plus the series Prometheus adds to every target, up, scrape_duration_seconds
...) and scrapes. The report: every run's figures, the medians, and sysmon (aggregator + PostgreSQL,
and with Redis) / Prometheus CPU. Target: aggregator + PostgreSQL <= 2.0 x Prometheus.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import psutil

from bench.common import (
    REPO,
    Monitor,
    clean_env,
    delta,
    fmt,
    free_port,
    print_report,
    print_rows,
    prometheus_tool,
    prometheus_version,
    scrape,
    stop_process,
    summed,
)

TARGET_RATIO = 2.0
SETTLE_S = 3.0  # pause between runs, so that one run's teardown does not fall into the next one's window


# --- set-up ----------------------------------------------------------------------------------------------


def go_duration(seconds: float) -> str:
    """A Prometheus config duration (whole milliseconds; 2.x takes no fractions)."""
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def write_config(path: Path, ports: list[int], interval: float) -> None:
    """One job, one static target per exporter port, each with the host label sysmon's run uses.
    JSON is YAML: no YAML library needed."""
    cfg = {
        "global": {
            "scrape_interval": go_duration(interval),
            "scrape_timeout": go_duration(interval * 0.8),
            "evaluation_interval": "1m",
        },
        "scrape_configs": [{
            "job_name": "fleet",
            "static_configs": [
                {"targets": [f"127.0.0.1:{port}"], "labels": {"host": f"bench-host-{i:05d}"}}
                for i, port in enumerate(ports)
            ],
        }],
    }
    path.write_text(json.dumps(cfg, indent=1))


# --- Prometheus's HTTP API -----------------------------------------------------------------------------------


def api_query(base: str, query: str, timeout: float = 30.0) -> list[dict]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=timeout) as r:
        data = json.load(r)
    if data.get("status") != "success":
        raise RuntimeError(f"query {query!r}: {data}")
    return data["data"]["result"]


def api_value(base: str, query: str) -> float:
    """The value of a query that yields one sample (an aggregation); 0 when it yields none."""
    result = api_query(base, query)
    return float(result[0]["value"][1]) if result else 0.0


def ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/-/ready", timeout=2.0) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


# --- one Prometheus run ---------------------------------------------------------------------------------------


class PromFleet:
    """The exporter and our own Prometheus, in `work`."""

    def __init__(self, args: argparse.Namespace, binary: str, work: Path):
        self.args = args
        self.binary = binary
        self.work = work
        self.exporter: subprocess.Popen[bytes] | None = None
        self.prometheus: subprocess.Popen[bytes] | None = None
        self.ports: list[int] = []
        self.exporter_info: dict = {}
        self.exporter_stats: dict = {}
        self.base = ""
        self.prometheus_rc: int | None = None
        self.prometheus_stop_s = math.nan
        self._logs: list = []

    def _log(self, name: str):
        f = open(self.work / name, "wb")  # noqa: SIM115 - closed in stop()
        self._logs.append(f)
        return f

    def log_tail(self, name: str, n: int = 3000) -> str:
        p = self.work / name
        return p.read_text(errors="replace")[-n:] if p.exists() else ""

    def start_exporter(self, timeout: float = 120.0) -> None:
        a = self.args
        cmd = [sys.executable, str(REPO / "bench" / "prom_exporter.py"), "--targets", str(a.hosts),
               "--series", str(a.series), *(["--gzip"] if a.exporter_gzip else [])]
        self.exporter = subprocess.Popen(cmd, env=clean_env(), cwd=self.work, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=self._log("exporter.log"))
        assert self.exporter.stdout is not None
        # The exporter prints its ports, in one line, once every socket listens.
        readable, _, _ = select.select([self.exporter.stdout], [], [], timeout)
        line = self.exporter.stdout.readline() if readable else b""
        if not line:
            raise RuntimeError(f"exporter did not start (exit {self.exporter.poll()})\n"
                               f"{self.log_tail('exporter.log')}")
        self.exporter_info = json.loads(line)
        self.ports = self.exporter_info["ports"]
        assert len(self.ports) == a.hosts

    def start_prometheus(self, timeout: float = 120.0) -> None:
        config = self.work / "prometheus.yml"
        write_config(config, self.ports, self.args.interval)
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        cmd = [self.binary, f"--config.file={config}", f"--storage.tsdb.path={self.work / 'tsdb'}",
               f"--web.listen-address=127.0.0.1:{port}", "--log.level=info"]
        self.prometheus = subprocess.Popen(cmd, env=clean_env(), cwd=self.work, stdin=subprocess.DEVNULL,
                                           stdout=self._log("prometheus.log"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not ready(self.base):
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"prometheus not ready within {timeout}s\n{self.log_tail('prometheus.log')}")
            time.sleep(0.2)

    def wait_all_up(self, timeout: float) -> float:
        """Seconds from now until every target's up == 1."""
        t0 = time.monotonic()
        while True:
            self._check_alive()
            with contextlib.suppress(OSError, RuntimeError):
                if api_value(self.base, "count(up == 1)") >= self.args.hosts:
                    return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                up = api_value(self.base, "count(up == 1)")
                raise RuntimeError(f"only {up:.0f} of {self.args.hosts} targets up after {timeout:.0f}s")
            time.sleep(1.0)

    def _check_alive(self) -> None:
        for name, p in (("prometheus", self.prometheus), ("exporter", self.exporter)):
            if p is not None and p.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.returncode}\n{self.log_tail(name + '.log')}")

    def stop(self) -> None:
        if self.prometheus is not None:
            t = time.monotonic()
            self.prometheus_rc = stop_process(self.prometheus)
            self.prometheus_stop_s = time.monotonic() - t
        if self.exporter is not None:
            stop_process(self.exporter)
            assert self.exporter.stdout is not None
            with contextlib.suppress(ValueError, json.JSONDecodeError):
                rest = self.exporter.stdout.read().decode().strip().splitlines()
                if rest:
                    self.exporter_stats = json.loads(rest[-1])
            self.exporter.stdout.close()
        for f in self._logs:
            f.close()
        self._logs.clear()


def _quantile(m: dict[str, float], name: str, q: str) -> float:
    vals = [v for k, v in m.items() if k.startswith(name + "{") and f'quantile="{q}"' in k]
    return max(vals) if vals else math.nan


async def run_prometheus(args: argparse.Namespace, binary: str, round_no: int) -> dict:
    if args.data_dir:
        work = args.data_dir / f"prometheus-{round_no}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="sysmon-bench-prom-"))
    fleet = PromFleet(args, binary, work)
    try:
        print(f"work dir {work}; starting the exporter ({args.hosts} targets x {args.series} series)...", flush=True)
        await asyncio.to_thread(fleet.start_exporter)
        await asyncio.to_thread(fleet.start_prometheus)
        assert fleet.prometheus is not None
        assert fleet.exporter is not None
        print(f"prometheus {fleet.base} (pid {fleet.prometheus.pid}) ready; exporter pid {fleet.exporter.pid}; "
              f"waiting for all {args.hosts} targets up...", flush=True)
        to_up = await asyncio.to_thread(fleet.wait_all_up, 3 * args.interval + 60)
        print(f"all targets up after {to_up:.1f}s; warm-up {args.warmup:g}s, then measuring {args.duration:g}s...",
              flush=True)
        await asyncio.sleep(args.warmup)
        metrics_url = f"{fleet.base}/metrics"
        watched = {
            "prometheus": psutil.Process(fleet.prometheus.pid),
            "exporter": psutil.Process(fleet.exporter.pid),
            "harness": psutil.Process(),
        }
        # As in the sysmon run: the harness's own requests stay outside the CPU window.
        m0 = await asyncio.to_thread(scrape, metrics_url)
        t0 = time.monotonic()
        mon = Monitor(watched, period=1.0, trees=("prometheus",)).start()
        await asyncio.sleep(args.duration)
        usage = mon.stop()
        t1 = time.monotonic()
        m1 = await asyncio.to_thread(scrape, metrics_url)
        window = t1 - t0
        print("measured; collecting results...", flush=True)

        base = fleet.base
        rng = f"[{max(1, round(args.duration))}s]"
        q = {
            "up": "count(up == 1)",
            "down": "count(up == 0)",
            "scraped": 'sum(scrape_samples_scraped{job="fleet"})',
            "series": 'count({job="fleet"})',
            "scrape_avg": f'avg(avg_over_time(scrape_duration_seconds{{job="fleet"}}{rng}))',
            "scrape_max": f'max(max_over_time(scrape_duration_seconds{{job="fleet"}}{rng}))',
            "up_samples": f'sum(count_over_time(up{{job="fleet"}}{rng}))',
            "up_ok_samples": f'sum(sum_over_time(up{{job="fleet"}}{rng}))',
        }
        got = {k: await asyncio.to_thread(api_value, base, v) for k, v in q.items()}
    finally:
        await asyncio.to_thread(fleet.stop)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    d = delta(m1, m0, "prometheus_")
    appended = summed(d, "prometheus_tsdb_head_samples_appended_total")
    scrapes = summed(d, "prometheus_target_interval_length_seconds_count")
    # Of every target's series, those it serves (scraped) and those Prometheus adds (up, scrape_*).
    per_target_scraped = got["scraped"] / max(got["up"], 1)
    per_target_series = got["series"] / max(got["up"], 1)
    metric_share = got["scraped"] / got["series"] if got["series"] else math.nan
    prom = usage["prometheus"]
    failures = {k: v for k, v in d.items() if k.startswith("prometheus_target_scrapes_") and v}
    failures.update({k: v for k, v in d.items() if k.startswith("net_conntrack_dialer_conn_failed_total") and v})
    return {
        "prometheus_cpu_pct": prom.cpu_pct,
        "prometheus_cpu_peak_pct": prom.cpu_peak_pct,
        "prometheus_cpu_seconds": prom.cpu_seconds,
        "prometheus_rss_avg_mib": prom.rss_avg_mib,
        "prometheus_rss_max_mib": prom.rss_max_mib,
        "exporter_cpu_pct": usage["exporter"].cpu_pct,
        "exporter_rss_max_mib": usage["exporter"].rss_max_mib,
        "harness_cpu_pct": usage["harness"].cpu_pct,
        "machine_busy_pct_of_all_cores": mon.machine_busy_pct,
        "duration_s": window,
        "seconds_to_all_up": to_up,
        "targets_up": got["up"],
        "targets_down": got["down"],
        "appended_samples_per_s": appended / window,
        "metric_samples_per_s": appended * metric_share / window,
        "scraped_series_per_target": per_target_scraped,
        "series_per_target": per_target_series,
        "head_series": m1.get("prometheus_tsdb_head_series", math.nan),
        "scrapes_per_s": scrapes / window,
        "scrape_duration_avg_ms": got["scrape_avg"] * 1000,
        "scrape_duration_max_ms": got["scrape_max"] * 1000,
        "up_samples_in_window": got["up_samples"],
        "failed_scrapes_in_window": got["up_samples"] - got["up_ok_samples"],
        "interval_p50_s": _quantile(m1, "prometheus_target_interval_length_seconds", "0.5"),
        "interval_p99_s": _quantile(m1, "prometheus_target_interval_length_seconds", "0.99"),
        "prometheus_cpu_us_per_sample": prom.cpu_seconds / max(appended, 1) * 1e6,
        "prometheus_cpu_us_per_metric_sample": prom.cpu_seconds / max(appended * metric_share, 1) * 1e6,
        "scrape_failures": failures,
        "exporter_requests": fleet.exporter_stats.get("requests"),
        "exporter_gzip_requests": fleet.exporter_stats.get("gzip"),
        "exporter_bad_requests": fleet.exporter_stats.get("bad"),
        "exporter_connections": fleet.exporter_stats.get("connections"),
        "exporter_response_bytes": fleet.exporter_info.get("response_bytes"),
        "exporter_gzip_response_bytes": fleet.exporter_info.get("gzip_response_bytes"),
        "prometheus_exit_code": fleet.prometheus_rc,
        "prometheus_stop_s": fleet.prometheus_stop_s,
    }


def _prom_rows(p: dict) -> list:
    return [
        ("Prometheus CPU avg / peak(1 s)", f"{fmt(p['prometheus_cpu_pct'])} % / {fmt(p['prometheus_cpu_peak_pct'])} %"),
        ("Prometheus RSS avg / max",
         f"{fmt(p['prometheus_rss_avg_mib'])} MiB / {fmt(p['prometheus_rss_max_mib'])} MiB"),
        ("samples appended/s (head)", f"{fmt(p['appended_samples_per_s'], digits=0)} total, "
                                      f"{fmt(p['metric_samples_per_s'], digits=0)} of the targets' series"),
        ("series per target", f"{fmt(p['series_per_target'], digits=0)} "
                              f"({fmt(p['scraped_series_per_target'], digits=0)} scraped + up, scrape_*); "
                              f"head series {fmt(p['head_series'], digits=0)}"),
        ("scrapes/s", f"{fmt(p['scrapes_per_s'])} (interval p50 {fmt(p['interval_p50_s'], 's', 3)}, "
                      f"p99 {fmt(p['interval_p99_s'], 's', 3)})"),
        ("scrape duration avg / max", f"{fmt(p['scrape_duration_avg_ms'], 'ms', 2)} / "
                                      f"{fmt(p['scrape_duration_max_ms'], 'ms', 2)}"),
        ("targets up / down", f"{p['targets_up']:.0f} / {p['targets_down']:.0f} "
                              f"(all up {p['seconds_to_all_up']:.1f} s after start)"),
        ("CPU per appended sample", f"{fmt(p['prometheus_cpu_us_per_sample'], 'us', 2)} "
                                    f"({fmt(p['prometheus_cpu_us_per_metric_sample'], 'us', 2)} per target sample)"),
        ("exporter CPU (not counted)", f"{fmt(p['exporter_cpu_pct'])} %, RSS {fmt(p['exporter_rss_max_mib'])} MiB, "
                                       f"{p['exporter_requests']} requests, {p['exporter_connections']} connections"),
        ("harness CPU / machine busy", f"{fmt(p['harness_cpu_pct'])} % / {fmt(p['machine_busy_pct_of_all_cores'])} %"),
        ("scrape failures", json.dumps(p["scrape_failures"]) if p["scrape_failures"] else "none"),
        ("Prometheus stop (SIGTERM)", f"exit {p['prometheus_exit_code']} in {p['prometheus_stop_s']:.1f} s"),
    ]


# --- the comparison ------------------------------------------------------------------------------------------


def _sysmon_sum(f: dict, redis: bool) -> float:
    return f["aggregator_cpu_pct"] + f["postgres_cpu_pct"] + (f["redis_cpu_pct"] if redis else 0.0)


async def compare(args: argparse.Namespace, run_sysmon: Callable[..., Awaitable[dict]]) -> dict:
    binary = await asyncio.to_thread(prometheus_tool, "prometheus")
    version = prometheus_version(binary)
    sysmon_runs: list[dict] = []
    prom_runs: list[dict] = []
    for r in range(1, args.rounds + 1):
        print(f"\n##### round {r}/{args.rounds}: sysmon", flush=True)
        sargs = argparse.Namespace(**vars(args))
        if args.data_dir:
            sargs.data_dir = args.data_dir / f"sysmon-{r}"
        sysmon_runs.append(await run_sysmon(sargs, json_line=False))
        await asyncio.sleep(SETTLE_S)
        print(f"\n##### round {r}/{args.rounds}: Prometheus {version}", flush=True)
        p = await run_prometheus(args, binary, r)
        print_rows(f"Prometheus {version}, round {r}: {args.hosts} targets x {args.series} series "
                   f"every {args.interval:g}s", _prom_rows(p))
        prom_runs.append(p)
        if r < args.rounds:
            await asyncio.sleep(SETTLE_S)

    med = statistics.median
    s_agg = med(f["aggregator_cpu_pct"] for f in sysmon_runs)
    s_pg = med(f["postgres_cpu_pct"] for f in sysmon_runs)
    s_redis = med(f["redis_cpu_pct"] for f in sysmon_runs)
    s_agg_pg = med(_sysmon_sum(f, False) for f in sysmon_runs)
    s_all = med(_sysmon_sum(f, True) for f in sysmon_runs)
    p_cpu = med(p["prometheus_cpu_pct"] for p in prom_runs)
    s_stored = med(f["stored_samples_per_s"] for f in sysmon_runs)
    p_appended = med(p["appended_samples_per_s"] for p in prom_runs)
    p_metric = med(p["metric_samples_per_s"] for p in prom_runs)
    ratio = s_agg_pg / p_cpu if p_cpu > 0 else math.nan
    ratio_redis = s_all / p_cpu if p_cpu > 0 else math.nan
    per_round = [_sysmon_sum(f, False) / p["prometheus_cpu_pct"] for f, p in zip(sysmon_runs, prom_runs, strict=True)]
    per_round_redis = [_sysmon_sum(f, True) / p["prometheus_cpu_pct"]
                       for f, p in zip(sysmon_runs, prom_runs, strict=True)]
    us = 1e4  # % of a core / (samples/s) -> us per sample
    median = {
        "sysmon_aggregator_cpu_pct": s_agg,
        "sysmon_postgres_cpu_pct": s_pg,
        "sysmon_redis_cpu_pct": s_redis,
        "sysmon_aggregator_postgres_cpu_pct": s_agg_pg,
        "sysmon_aggregator_postgres_redis_cpu_pct": s_all,
        "sysmon_aggregator_rss_max_mib": med(f["aggregator_rss_max_mib"] for f in sysmon_runs),
        "sysmon_stored_samples_per_s": s_stored,
        "sysmon_delay_p99_ms": med(f["delay_p99_ms"] for f in sysmon_runs),
        "sysmon_generator_cpu_pct": med(f["generator_cpu_pct"] for f in sysmon_runs),
        "prometheus_cpu_pct": p_cpu,
        "prometheus_rss_max_mib": med(p["prometheus_rss_max_mib"] for p in prom_runs),
        "prometheus_appended_samples_per_s": p_appended,
        "prometheus_metric_samples_per_s": p_metric,
        "exporter_cpu_pct": med(p["exporter_cpu_pct"] for p in prom_runs),
        "sysmon_aggregator_postgres_cpu_us_per_sample": s_agg_pg * us / s_stored if s_stored else math.nan,
        "prometheus_cpu_us_per_appended_sample": p_cpu * us / p_appended if p_appended else math.nan,
        "prometheus_cpu_us_per_metric_sample": p_cpu * us / p_metric if p_metric else math.nan,
    }
    figures = {
        "bench": "ingest",
        "mode": "steady",
        "compare": "prometheus",
        "prometheus_version": version,
        "hosts": args.hosts,
        "series": args.series,
        "interval_s": args.interval,
        "scrape_timeout_s": args.interval * 0.8,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "rounds": args.rounds,
        "exporter_gzip": args.exporter_gzip,
        "offered_samples_per_s": args.hosts * args.series / args.interval,
        "cores": os.cpu_count(),
        "median": median,
        "ratio_aggregator_postgres_over_prometheus": ratio,
        "ratio_aggregator_postgres_redis_over_prometheus": ratio_redis,
        "ratio_per_round": per_round,
        "ratio_with_redis_per_round": per_round_redis,
        "target_ratio_max": TARGET_RATIO,
        "target_met": bool(ratio <= TARGET_RATIO),
        "sysmon_runs": sysmon_runs,
        "prometheus_runs": prom_runs,
    }
    _report(args, figures, version)
    return figures


def _report(args: argparse.Namespace, f: dict, version: str) -> None:
    m = f["median"]
    rows: list = [
        ("load", f"{args.hosts} hosts x {args.series} series every {args.interval:g}s = "
                 f"{fmt(f['offered_samples_per_s'], digits=0)} samples/s, each side"),
        ("runs", f"{args.rounds} round(s), alternately sysmon then Prometheus, never at once; "
                 f"{args.duration:g} s measured after {args.warmup:g} s warm-up"),
        ("Prometheus", f"{version}: {args.hosts} targets (a port each of one exporter process, "
                       f"{'gzip' if args.exporter_gzip else 'plain text'}), scrape every {args.interval:g}s, "
                       f"timeout {args.interval * 0.8:g}s"),
        "each run (CPU in % of one core)",
    ]
    for i, (s, p) in enumerate(zip(f["sysmon_runs"], f["prometheus_runs"], strict=True), 1):
        rows.append((f"round {i} sysmon",
                     f"aggregator {fmt(s['aggregator_cpu_pct'])} + PostgreSQL {fmt(s['postgres_cpu_pct'])} "
                     f"(+ Redis {fmt(s['redis_cpu_pct'])}) %, {fmt(s['stored_samples_per_s'], digits=0)} stored/s"))
        rows.append((f"round {i} Prometheus",
                     f"{fmt(p['prometheus_cpu_pct'])} % (exporter {fmt(p['exporter_cpu_pct'])} % apart), "
                     f"{fmt(p['appended_samples_per_s'], digits=0)} appended/s "
                     f"({fmt(p['metric_samples_per_s'], digits=0)} target samples)"))
        rows.append((f"round {i} ratio", f"{fmt(f['ratio_per_round'][i - 1], digits=2)} "
                                         f"({fmt(f['ratio_with_redis_per_round'][i - 1], digits=2)} with Redis)"))
    rows += [
        f"medians over {args.rounds} round(s)",
        ("sysmon aggregator", f"{fmt(m['sysmon_aggregator_cpu_pct'])} % (RSS max "
                              f"{fmt(m['sysmon_aggregator_rss_max_mib'])} MiB)"),
        ("sysmon PostgreSQL (all processes)", f"{fmt(m['sysmon_postgres_cpu_pct'])} %"),
        ("sysmon Redis", f"{fmt(m['sysmon_redis_cpu_pct'])} %"),
        ("sysmon aggregator + PostgreSQL", f"{fmt(m['sysmon_aggregator_postgres_cpu_pct'])} % "
                                           f"(+ Redis: {fmt(m['sysmon_aggregator_postgres_redis_cpu_pct'])} %)"),
        ("sysmon samples stored/s", f"{fmt(m['sysmon_stored_samples_per_s'], digits=0)} "
                                    f"(delay p99 {fmt(m['sysmon_delay_p99_ms'])} ms)"),
        ("Prometheus", f"{fmt(m['prometheus_cpu_pct'])} % (RSS max {fmt(m['prometheus_rss_max_mib'])} MiB)"),
        ("Prometheus samples appended/s", f"{fmt(m['prometheus_appended_samples_per_s'], digits=0)} total, "
                                          f"{fmt(m['prometheus_metric_samples_per_s'], digits=0)} target samples"),
        ("exporter (not counted)", f"{fmt(m['exporter_cpu_pct'])} %"),
        ("CPU per sample", f"sysmon aggregator + PostgreSQL "
                           f"{fmt(m['sysmon_aggregator_postgres_cpu_us_per_sample'], 'us', 2)}; Prometheus "
                           f"{fmt(m['prometheus_cpu_us_per_metric_sample'], 'us', 2)} per target sample, "
                           f"{fmt(m['prometheus_cpu_us_per_appended_sample'], 'us', 2)} per appended"),
        "ratio sysmon / Prometheus (CPU)",
        ("aggregator + PostgreSQL", f"{fmt(f['ratio_aggregator_postgres_over_prometheus'], digits=2)}",
         f"<= {TARGET_RATIO:g}", f["target_met"]),
        ("aggregator + PostgreSQL + Redis", f"{fmt(f['ratio_aggregator_postgres_redis_over_prometheus'], digits=2)}"),
    ]
    print_report("sysmon vs Prometheus: steady ingest CPU", rows, f)
