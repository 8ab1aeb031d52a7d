"""The Lambda pipeline's figures: the SQS exporter's throughput, and the handler's cost per batch.

    python bench/pipeline.py [--hosts 200] [--minutes 5] [--message-bytes 65536]

A backlog of the samples topic as the aggregator publishes it (one entry per group of batches, each
batch one collector's 5 s frame of the recorded real collector, series described on first sight) is
put on the bus of an embedded Redis; `SqsExporter` forwards it to a queue of moto's SQS server on a
loopback port, timed from start to the last entry acknowledged. Then the queue is received as
Lambda's poller receives it, 10 messages to an event, and a fresh interpreter that imports only the
handler (as a Lambda container does) handles the events against an embedded PostgreSQL: the time of
each invocation, and the process's peak RSS. Figures printed, one JSON line last.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import clean_env, fmt, percentile, print_report


def backlog(hosts: int, minutes: int) -> tuple[list[bytes], int, int]:
    """Bus entries (SamplesEvents payloads) of `hosts` collectors over `minutes`; (entries, batches, samples)."""
    from sysmon.core.metrics import series_id
    from sysmon.pb.v1 import events_pb2
    from tests.pipeline_helpers import recording

    rec = recording()
    defs = {s["ref"]: s for s in rec["series"]}
    frames = rec["frames"][: minutes * 12]
    names = [f"node-{i:04d}" for i in range(hosts)]
    ids = {h: {r: series_id(h, s["name"], s["attributes"]) for r, s in defs.items()} for h in names}
    entries, batches, samples = [], 0, 0
    described: set[str] = set()
    per_entry = 10  # batches the aggregator writes together arrive within milliseconds of each other
    for seq, (t, refs, values) in enumerate(frames, start=1):
        for i in range(0, hosts, per_entry):
            msg = events_pb2.SamplesEvents()
            for h in names[i:i + per_entry]:
                ev = msg.events.add(host_id=h, session_id="bench", seq=seq, stored_unix_ms=t)
                if h not in described:
                    described.add(h)
                    for r in refs:
                        s = defs[r]
                        ev.series.add(id=ids[h][r], name=s["name"], attributes=s["attributes"], unit=s["unit"],
                                      kind=s["kind"])
                ev.frames.add(time_unix_ms=t, series_ids=[ids[h][r] for r in refs], values=values)
                batches += 1
                samples += len(values)
            entries.append(msg.SerializeToString())
    return entries, batches, samples


async def export(redis_url: str, queue: str, moto: str, entries: list[bytes], message_bytes: int) -> dict:
    import redis.asyncio as aioredis

    from sysmon.core import bus as busmod
    from sysmon.pipeline.exporter import SqsExporter, sqs_client
    from sysmon.pipeline.settings import SqsExporterSettings

    r = aioredis.from_url(redis_url)
    bus = busmod.RedisBus(r, retention_ms=24 * 3600 * 1000)
    for i in range(0, len(entries), 500):
        await bus.publish_many(busmod.SAMPLES, entries[i:i + 500])
    settings = SqsExporterSettings(queue_url=queue, endpoint_url=moto, region="us-east-1", metrics_listen="",
                                   message_bytes=message_bytes, linger="50ms")
    exporter = SqsExporter(settings, redis_url=redis_url, client=sqs_client(settings))
    stop = asyncio.Event()
    cpu0, t0 = time.process_time(), time.perf_counter()
    task = asyncio.create_task(exporter.run(stop))
    progress, last = time.monotonic(), 0
    while exporter.acked < len(entries):
        await asyncio.sleep(0.05)
        if task.done():
            task.result()
        if exporter.acked != last:
            progress, last = time.monotonic(), exporter.acked
        elif time.monotonic() - progress > 60:
            raise RuntimeError(f"no progress for 60 s: {exporter.acked} of {len(entries)} entries forwarded")
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    stop.set()
    await task
    await r.aclose()
    return {"elapsed_s": elapsed, "cpu_s": cpu, "messages": exporter.sent_messages, "calls": exporter.calls,
            "samples": exporter.sent_samples, "failures": exporter.failures, "splits": exporter.packer.splits}


def receive_events(sqs, queue: str) -> list[dict]:
    from tests.pipeline_helpers import lambda_records

    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events = []
    while True:
        got = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, AttributeNames=["All"],
                                  MessageAttributeNames=["All"], VisibilityTimeout=3600).get("Messages", [])
        if not got:
            return events
        events.append({"Records": lambda_records(got, arn)})


HANDLER = r"""
import json, sys, time
def hwm():  # this process's peak RSS in kB (ru_maxrss would include the parent's image from before exec)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
base = hwm()
from sysmon.pipeline import lambda_handler
loaded = hwm()
class Context:
    function_name = "bench"; memory_limit_in_mb = 256; aws_request_id = "r"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:bench"
import io, contextlib
times, again = [], []
for out in (times, again):  # again: every record a duplicate delivery
    for line in open(sys.argv[1]):  # one event at a time, as Lambda hands them
        ev = json.loads(line)
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            r = lambda_handler.handler(ev, Context())
        out.append(time.perf_counter() - t0)
        assert r == {"batchItemFailures": []}, r
print(json.dumps({"times": times, "again": again, "rss_before_import_kb": base, "rss_loaded_kb": loaded,
                  "rss_peak_kb": hwm()}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=200)
    ap.add_argument("--minutes", type=int, default=5)
    ap.add_argument("--message-bytes", type=int, default=64 * 1024)
    args = ap.parse_args()

    import boto3

    from sysmon.core.embedded import EmbeddedPostgres, EmbeddedRedis, free_port, runtime_env

    runtime_env()
    data = Path(tempfile.mkdtemp(prefix="sysmon-bench-pipe-"))
    pg, rd = EmbeddedPostgres(data), EmbeddedRedis(data)
    dsn, redis_url = pg.start(), rd.start()
    port = free_port()
    env = clean_env(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")})
    moto_proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p",
                                  str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    moto = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{moto}/moto-api/", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        sqs = boto3.client("sqs", endpoint_url=moto, region_name="us-east-1")
        queue = sqs.create_queue(QueueName="bench")["QueueUrl"]

        entries, batches, samples = backlog(args.hosts, args.minutes)
        ex = asyncio.run(export(redis_url, queue, moto, entries, args.message_bytes))
        assert ex["samples"] == samples, (ex["samples"], samples)

        events = receive_events(sqs, queue)
        path = data / "events.jsonl"
        path.write_text("".join(json.dumps(e) + "\n" for e in events))
        out = subprocess.run([sys.executable, "-c", HANDLER, str(path)], capture_output=True, text=True,
                             env=clean_env(SYSMON_POSTGRES_URL=dsn), check=True, cwd=Path(__file__).parents[1])
        h = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        moto_proc.terminate()
        moto_proc.wait(10)
        rd.stop()
        pg.stop()
        shutil.rmtree(data, ignore_errors=True)

    records = sum(len(e["Records"]) for e in events)
    full = [t for t, e in zip(h["times"], events, strict=True) if len(e["Records"]) == 10]
    figures = {
        "hosts": args.hosts, "minutes": args.minutes, "bus_entries": len(entries), "batches": batches,
        "samples": samples, "message_bytes": args.message_bytes,
        "exporter_samples_per_s": samples / ex["elapsed_s"], "exporter_elapsed_s": ex["elapsed_s"],
        "exporter_cpu_s": ex["cpu_s"], "exporter_cpu_us_per_sample": ex["cpu_s"] / samples * 1e6,
        "messages": ex["messages"], "calls": ex["calls"], "messages_per_call": ex["messages"] / ex["calls"],
        "samples_per_message": samples / ex["messages"], "failures": ex["failures"],
        "invocations": len(events), "records": records,
        "handler_ms_per_10_records_p50": percentile(full, 50) * 1000 if full else None,
        "handler_ms_per_10_records_p95": percentile(full, 95) * 1000 if full else None,
        "handler_ms_per_sample_us": sum(h["times"]) / samples * 1e6,
        "handler_duplicate_ms_per_10_records_p50": percentile(
            [t for t, e in zip(h["again"], events, strict=True) if len(e["Records"]) == 10], 50) * 1000,
        "handler_rss_loaded_mib": h["rss_loaded_kb"] / 1024, "handler_rss_peak_mib": h["rss_peak_kb"] / 1024,
    }
    rows = [
        "exporter: bus backlog -> SQS (moto server on loopback)",
        ("load", f"{args.hosts} hosts x {args.minutes} min at 5 s: {len(entries):,} bus entries, "
                 f"{batches:,} batches, {samples:,} samples"),
        ("forwarded", f"{fmt(figures['exporter_samples_per_s'], 'samples/s', 0)} ({fmt(ex['elapsed_s'], 's')})"),
        ("exporter CPU", f"{fmt(figures['exporter_cpu_us_per_sample'], 'us/sample', 2)}"),
        ("messages", f"{ex['messages']:,} in {ex['calls']:,} calls: {fmt(figures['messages_per_call'], '', 2)}"
                     f" per call, {fmt(figures['samples_per_message'], '', 0)} samples per message"),
        "handler: 10-record events, fresh interpreter with only the handler loaded, embedded PostgreSQL",
        ("invocations", f"{len(events):,} ({records:,} records)"),
        ("per 10-record batch", f"p50 {fmt(figures['handler_ms_per_10_records_p50'], 'ms')}, "
                                f"p95 {fmt(figures['handler_ms_per_10_records_p95'], 'ms')}"),
        ("same batch delivered again", f"p50 {fmt(figures['handler_duplicate_ms_per_10_records_p50'], 'ms')}"),
        ("memory (RSS)", f"{fmt(figures['handler_rss_loaded_mib'], 'MiB')} loaded, "
                         f"{fmt(figures['handler_rss_peak_mib'], 'MiB')} peak"),
    ]
    print_report("Lambda pipeline", rows, figures)


if __name__ == "__main__":
    main()
