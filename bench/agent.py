"""Collector footprint: CPU and memory of the real `sysmon agent` process at its default settings.

    python bench/agent.py [--duration 120] [--interval 5]

Embedded PostgreSQL and Redis and the aggregator run as in bench/ingest.py; then the collector
runs as its own process (`python -m sysmon agent`, SYSMON_INTERVAL=<interval>s) against them.
After a 10 s warm-up (connect, first samples, series declared), the collector's CPU (psutil
cpu_times delta, % of one core) and RSS (sampled every second) are measured for --duration
seconds, and its batches are confirmed stored and acknowledged: the rows of its host in
samples_raw and the sequence numbers committed for its session grow by about
duration / interval batches.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Monitor, Stack, clean_env, fmt, print_report, stop_process

CPU_TARGET_PCT = 0.5
RSS_TARGET_MIB = 60.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=120.0, help="measured seconds")
    p.add_argument("--interval", type=float, default=5.0, help="collection interval, seconds")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds before measuring")
    p.add_argument("--keep", action="store_true", help="keep the data directory")
    p.add_argument("--data-dir", type=Path, default=None, help="default: a fresh temp directory")
    return p.parse_args(argv)


async def _host_state(db, host_id: str) -> tuple[int, int, int, int]:
    """(rows, distinct frame times, series, committed batches) of one host."""
    row = await db.fetchrow(
        """
        SELECT count(*) AS n, count(DISTINCT r.ts) AS frames, count(DISTINCT r.series_id) AS series
        FROM samples_raw r JOIN series s USING (series_id) WHERE s.host_id = $1
        """,
        host_id,
    )
    committed = await db.fetchval(
        "SELECT coalesce(sum(upper(r) - lower(r)), 0) FROM ingest_sessions s, unnest(s.committed) r "
        "WHERE s.host_id = $1",
        host_id,
    )
    return row["n"], row["frames"], row["series"], int(committed)


async def run(args: argparse.Namespace) -> dict:
    import asyncpg
    import psutil

    host_id = f"bench-agent-{uuid.uuid4().hex[:8]}"
    stack = Stack(args.data_dir, keep=args.keep)
    agent: subprocess.Popen[bytes] | None = None
    agent_log = None
    try:
        print(f"data dir {stack.data_dir}; starting PostgreSQL, Redis and the aggregator...", flush=True)
        await asyncio.to_thread(stack.start)
        agent_log = open(stack.data_dir / "agent.log", "wb")  # noqa: ASYNC230, SIM115 - closed below
        env = clean_env(
            SYSMON_AGGREGATOR=stack.address,
            SYSMON_INTERVAL=f"{args.interval:g}s",
            SYSMON_LOG_LEVEL="warning",
            SYSMON_HOST_ID=host_id,
        )
        agent = subprocess.Popen(  # noqa: ASYNC220 - returns at once; the event loop has nothing else to do
            [sys.executable, "-m", "sysmon", "agent"], env=env, cwd=stack.data_dir,
            stdin=subprocess.DEVNULL, stdout=agent_log, stderr=subprocess.STDOUT,
        )
        print(f"collector pid {agent.pid} as {host_id}, every {args.interval:g}s; warm-up {args.warmup:g}s...",
              flush=True)
        db = await asyncpg.connect(stack.dsn)
        await asyncio.sleep(args.warmup)
        if agent.poll() is not None:
            raise RuntimeError(f"collector exited with {agent.returncode}")
        proc = psutil.Process(agent.pid)
        mon = Monitor({"agent": proc, "aggregator": stack.aggregator_process}, period=1.0,
                      trees=("agent",)).start()
        s0 = await _host_state(db, host_id)
        print(f"measuring {args.duration:g}s...", flush=True)
        await asyncio.sleep(args.duration)
        usage = mon.stop()
        s1 = await _host_state(db, host_id)
        threads = proc.num_threads()
        await db.close()
        t = time.monotonic()
        rc = await asyncio.to_thread(stop_process, agent)
        agent_stop_s = time.monotonic() - t
        log_tail = (stack.data_dir / "agent.log").read_text(errors="replace")[-1500:]
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
            agent.wait()
        if agent_log is not None:
            agent_log.close()
        await asyncio.to_thread(stack.stop)

    a = usage["agent"]
    expected = args.duration / args.interval
    batches = s1[3] - s0[3]
    figures = {
        "bench": "agent",
        "interval_s": args.interval,
        "duration_s": args.duration,
        "agent_cpu_pct": a.cpu_pct,
        "agent_cpu_peak_pct": a.cpu_peak_pct,
        "agent_cpu_seconds": a.cpu_seconds,
        "agent_rss_avg_mib": a.rss_avg_mib,
        "agent_rss_max_mib": a.rss_max_mib,
        "agent_threads": threads,
        "aggregator_cpu_pct": usage["aggregator"].cpu_pct,
        "aggregator_rss_avg_mib": usage["aggregator"].rss_avg_mib,
        "series": s1[2],
        "samples_per_batch": (s1[0] - s0[0]) / batches if batches else math.nan,
        "rows_added": s1[0] - s0[0],
        "frames_added": s1[1] - s0[1],
        "batches_committed": batches,
        "batches_expected": expected,
        "agent_exit_code": rc,
        "agent_stop_s": agent_stop_s,
    }
    acked_ok = batches >= math.floor(expected) - 1 and s1[0] > s0[0]
    rows = [
        ("collector", f"python -m sysmon agent, interval {args.interval:g}s, {s1[2]} series, default settings"),
        ("measured", f"{args.duration:g} s after {args.warmup:g} s warm-up"),
        "collector footprint",
        ("CPU (% of one core)", f"{a.cpu_pct:.3f} %  ({a.cpu_seconds:.2f} CPU-s; peak 1 s {a.cpu_peak_pct:.1f} %)",
         f"<= {CPU_TARGET_PCT} %", a.cpu_pct <= CPU_TARGET_PCT),
        ("RSS avg", fmt(a.rss_avg_mib, "MiB")),
        ("RSS max", fmt(a.rss_max_mib, "MiB"), f"<= {RSS_TARGET_MIB:g} MiB", a.rss_max_mib <= RSS_TARGET_MIB),
        ("threads", str(threads)),
        "delivery",
        ("batches committed + acked", f"{batches} (expected ~{expected:.0f})", f">= {math.floor(expected) - 1}",
         acked_ok),
        ("rows added for the host", f"{s1[0] - s0[0]:,} in {s1[1] - s0[1]} frames "
                                     f"({fmt(figures['samples_per_batch'])} samples/batch)"),
        ("aggregator CPU / RSS",
         f"{usage['aggregator'].cpu_pct:.2f} % / {fmt(usage['aggregator'].rss_avg_mib, 'MiB')}"),
        ("collector stop (SIGTERM)", f"exit {rc} in {agent_stop_s:.1f} s"),
    ]
    if rc != 0 or not acked_ok:
        rows.append(("collector log tail", log_tail.strip().replace("\n", " | ")[-600:] or "(empty)"))
    print_report("sysmon collector benchmark", rows, figures)
    return figures


def main(argv: list[str] | None = None) -> None:
    asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
