"""Record what a real `sysmon agent` samples on this machine, for bench/storage.py's real dataset.

    python bench/record_agent.py [--duration 3600] [--interval 5] [--out bench/data/agent-1h.json.gz]

Runs the real collector (its sampler, its sampling loop and clock, so timestamps carry their real
jitter) with no aggregator to talk to: every batch stays in its unacknowledged buffer, which is
written out at the end: each series' definition and every frame (time, refs, values).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import logging
import platform
import time
from pathlib import Path

from sysmon.agent.collector import Collector
from sysmon.core.settings import AgentSettings


async def record(duration: float, interval: float) -> dict:
    settings = AgentSettings(aggregator="127.0.0.1:1", interval=f"{interval}s", max_backoff="60s",
                             buffer_batches=int(duration / interval) + 100)
    collector = Collector(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(collector.run(stop))
    started = time.time()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(stop.wait()), duration)
    stop.set()
    await task
    frames = [[p.frame.time_unix_ms, list(p.frame.refs), list(p.frame.values)]
              for p in collector.buffer._items.values()]
    series = [{"ref": d.ref, "name": d.name, "attributes": dict(d.attributes), "unit": d.unit, "kind": d.kind}
              for d in collector._defs.values()]
    return {"host": platform.node(), "interval_s": interval, "started": started, "series": series, "frames": frames}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=3600.0)
    p.add_argument("--interval", type=float, default=5.0)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "data" / "agent-1h.json.gz")
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)
    data = asyncio.run(record(args.duration, args.interval))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(args.out, "wt") as f:
        json.dump(data, f, separators=(",", ":"))
    n = sum(len(fr[1]) for fr in data["frames"])
    print(f"recorded {len(data['frames'])} frames, {len(data['series'])} series, {n} samples -> {args.out}")
    print(json.dumps({"bench": "record_agent", "frames": len(data["frames"]), "series": len(data["series"]),
                      "samples": n}))


if __name__ == "__main__":
    main()
