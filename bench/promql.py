"""The Prometheus API's query_range over a day: p50/p99 of a 24 h rate() over 100 hosts.

    python bench/promql.py [--hosts 100] [--hours 23.5] [--step 60] [--runs 20]

Embedded PostgreSQL and Redis and an aggregator process (bench/common.py's Stack), loaded through
remote write with --hours of one counter per host, a sample every 5 s (100 hosts: 1.7 M samples,
stored as any remote-written sample is), the raw tier's hours sealed by the aggregator's own job;
then a gateway process (`python -m sysmon gateway`). Each query is a GET of
/prometheus/api/v1/query_range over the whole range at --step (Grafana's step for a day on a wide
panel), timed at the client, --runs times after one warm-up:

  rate:     rate(bench_requests_total[5m])            100 series x 1,411 points
  sum rate: sum(rate(bench_requests_total[5m]))       the fleet's total
"""

from __future__ import annotations

import argparse
import struct
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Stack, clean_env, fmt, percentile, print_report, stop_process
from bench.remote_write import _field, _label, _varint

QUERIES = {"rate": "rate(bench_requests_total[5m])", "sum rate": "sum(rate(bench_requests_total[5m]))"}


def load(url: str, hosts: int, hours: float, per_request: int = 5000) -> int:
    """One counter per host, every 5 s over the last `hours`, as TimeSeries of many samples."""
    import cramjam

    now = int(time.time() * 1000) // 5000 * 5000
    times = list(range(now - int(hours * 3600_000), now, 5000))
    headers = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf"}
    sent = 0
    with httpx.Client(timeout=300) as client:
        for h in range(hosts):
            labels = (_label("__name__", "bench_requests_total") + _label("instance", f"host-{h:03d}:9100")
                      + _label("job", "node"))
            value = 0.0
            for i in range(0, len(times), per_request):
                samples = []
                for t in times[i:i + per_request]:
                    value += 1 + (h % 7) + (t // 5000) % 3
                    samples.append(_field(2, b"\x09" + struct.pack("<d", value) + b"\x10" + _varint(t)))
                body = bytes(cramjam.snappy.compress_raw(_field(1, labels + b"".join(samples))))
                r = client.post(url, content=body, headers=headers)
                r.raise_for_status()
                sent += len(samples)
    return sent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hosts", type=int, default=100)
    p.add_argument("--hours", type=float, default=23.5, help="of samples (the raw tier keeps 24 h)")
    p.add_argument("--step", type=float, default=60.0, help="seconds")
    p.add_argument("--runs", type=int, default=20)
    a = p.parse_args()
    from sysmon.core.embedded import free_port

    http_port, gw_port = free_port(), free_port()
    with Stack(aggregator_env={"SYSMON_HTTP_LISTEN": f"127.0.0.1:{http_port}"}) as stack:
        stack.start()
        t0 = time.monotonic()
        n = load(f"http://127.0.0.1:{http_port}/api/v1/write", a.hosts, a.hours)
        load_s = time.monotonic() - t0
        print(f"loaded {n:,} samples in {load_s:.0f} s", flush=True)
        env = clean_env(SYSMON_POSTGRES_URL=stack.dsn, SYSMON_REDIS_URL=stack.redis_url,
                        SYSMON_LISTEN=f"127.0.0.1:{gw_port}", SYSMON_LOG_LEVEL="warning",
                        SYSMON_INSECURE_NO_AUTH="true")
        gw = subprocess.Popen([sys.executable, "-m", "sysmon", "gateway"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{gw_port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("gateway not ready")
                time.sleep(0.2)
            end = time.time()
            start = end - a.hours * 3600 + 300
            figures: dict[str, object] = {"hosts": a.hosts, "hours": a.hours, "step_s": a.step, "samples": n,
                                          "load_samples_per_s": n / load_s}
            rows = [("samples loaded", f"{n:,} over {a.hours} h, {a.hosts} hosts ({fmt(n / load_s, '/s', 0)})")]
            with httpx.Client(base_url=base, timeout=300) as client:
                for label, q in QUERIES.items():
                    params = {"query": q, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{a.step:g}"}
                    times = []
                    for i in range(a.runs + 1):
                        t = time.perf_counter()
                        r = client.get("/prometheus/api/v1/query_range", params=params)
                        elapsed = time.perf_counter() - t
                        r.raise_for_status()
                        body = r.json()
                        if i:
                            times.append(elapsed)
                    series = len(body["data"]["result"])
                    points = sum(len(s["values"]) for s in body["data"]["result"])
                    key = label.replace(" ", "_")
                    figures[f"{key}_p50_ms"] = percentile(times, 50) * 1000
                    figures[f"{key}_p99_ms"] = percentile(times, 99) * 1000
                    figures[f"{key}_points"] = points
                    rows.append((f"{label}: {q}", f"p50 {fmt(percentile(times, 50) * 1000, 'ms')}, "
                                                  f"p99 {fmt(percentile(times, 99) * 1000, 'ms')} "
                                                  f"({series} series, {points:,} points)"))
        finally:
            stop_process(gw)
        print_report(f"query_range over {a.hours} h, step {a.step:g} s", rows, figures)


if __name__ == "__main__":
    main()
