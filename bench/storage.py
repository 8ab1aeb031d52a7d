"""Storage benchmark: bytes per sample of the sealed raw tier against Prometheus, on the same samples.

    python bench/storage.py [--hosts 100] [--sim-series 60] [--sim-hours 2] [--real bench/data/agent-1h.json.gz]

Two datasets, each written into sysmon (embedded PostgreSQL, through the real writer: COPY into the
open area), rolled up and sealed by the real jobs, and written as OpenMetrics for Prometheus's own
`promtool tsdb create-blocks-from openmetrics` (Debian's `prometheus` package, installed here when
missing), in the same run:
  real  an hour of a real `sysmon agent` on this machine (bench/record_agent.py: every series, real
        psutil values, real timestamps with their jitter), replicated to --hosts hosts, each shifted
        by its own offset within the interval;
  sim   bench/ingest.py's simulated fleet: --hosts hosts x --sim-series series every 5 s.
Printed per dataset: sysmon's sealed raw tier (heap + TOAST + indexes of samples_sealed, after
VACUUM) and Prometheus's blocks (chunks + index) per sample, and their ratio; the codec alone
(pcodec against byte-shuffle + zstd on the same blocks: size and time); and what sealing costs
(aggregator process and PostgreSQL CPU per sample, projected to the 1,000-host steady fleet).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import fmt, print_report, prometheus_tool, prometheus_version, tree_cpu_seconds
from bench.ingest import VALUE_VARIANTS, realistic_series

STEADY_SAMPLES_PER_S = 12_000  # 1,000 hosts x 60 series every 5 s
TARGET_RATIO = 0.9
TARGET_SEAL_CORE_PCT = 10.0
HOUR_MS = 3_600_000


@dataclass
class Dataset:
    name: str
    # (host, name, attributes, unit, kind) -> (times in Unix ms, values)
    series: dict[tuple[str, str, tuple[tuple[str, str], ...], str, int], tuple[np.ndarray, np.ndarray]]
    start_ms: int
    end_ms: int

    @property
    def samples(self) -> int:
        return sum(len(ts) for ts, _ in self.series.values())


def real_dataset(path: Path, hosts: int, hour_ms: int, seed: int = 3) -> Dataset:
    with gzip.open(path, "rt") as f:
        rec = json.load(f)
    defs = {d["ref"]: d for d in rec["series"]}
    frames = rec["frames"]
    base = frames[0][0]
    rng = np.random.default_rng(seed)
    per_ref: dict[int, tuple[list[int], list[float]]] = {}
    for t, refs, values in frames:
        for r, v in zip(refs, values, strict=True):
            ts, vs = per_ref.setdefault(r, ([], []))
            ts.append(t - base)
            vs.append(v)
    interval_ms = int(rec["interval_s"] * 1000)
    out: dict = {}
    for h in range(hosts):
        host = f"real-{h:03d}"
        offset = int(rng.integers(0, interval_ms))
        for r, (ts, vs) in per_ref.items():
            d = defs[r]
            t = np.asarray(ts, dtype=np.int64) + hour_ms + offset
            keep = t < hour_ms + HOUR_MS  # the hour block: what spills past it is left out of both stores
            key = (host, d["name"], tuple(sorted(d["attributes"].items())), d["unit"], d["kind"])
            out[key] = (t[keep], np.asarray(vs, dtype=np.float64)[keep])
    return Dataset("real", out, hour_ms, hour_ms + HOUR_MS)


def sim_dataset(hosts: int, n_series: int, hours: int, start_ms: int, seed: int = 1) -> Dataset:
    """What bench/ingest.py sends: every host's series cycle through 64 random value vectors."""
    rng = np.random.default_rng(seed)
    variants = np.stack([rng.random(n_series) * 100.0 for _ in range(VALUE_VARIANTS)])
    frames = hours * 720
    defs = realistic_series(n_series)
    out: dict = {}
    for h in range(hosts):
        host = f"sim-{h:03d}"
        t = start_ms + np.arange(frames, dtype=np.int64) * 5000 + (h * 5000) // hosts
        keep = t < start_ms + hours * HOUR_MS
        rows = variants[(np.arange(frames) + 1) % VALUE_VARIANTS]
        for i, (name, attrs, unit, kind) in enumerate(defs):
            out[(host, name, tuple(sorted(attrs.items())), unit, kind)] = (t[keep], rows[keep, i].copy())
    return Dataset("sim", out, start_ms, start_ms + hours * HOUR_MS)


# --- sysmon --------------------------------------------------------------------------------------


async def load_sysmon(pool: asyncpg.Pool, ds: Dataset) -> None:
    from sysmon.core.batch import NormalizedBatch
    from sysmon.core.metrics import Series, series_id
    from sysmon.core.storage.writer import SampleWriter

    writer = SampleWriter(pool, "plain")
    by_host: dict[str, list[tuple[Series, np.ndarray, np.ndarray]]] = {}
    for (host, name, attrs, unit, kind), (ts, vs) in ds.series.items():
        s = Series(series_id(host, name, dict(attrs)), host, name, dict(attrs), unit, kind)
        by_host.setdefault(host, []).append((s, ts, vs))
    batches = []
    for host, series in by_host.items():
        frames: dict[int, tuple[list[int], list[float]]] = {}
        for s, ts, vs in series:
            for t, v in zip(ts.tolist(), vs.tolist(), strict=True):
                ids, values = frames.setdefault(t, ([], []))
                ids.append(s.id)
                values.append(v)
        for seq, t in enumerate(sorted(frames), start=1):
            ids, values = frames[t]
            batches.append(NormalizedBatch(host, "bench", seq, [s for s, _, _ in series], [t], [ids], [values]))
    for i in range(0, len(batches), 2000):
        await writer.store(batches[i:i + 2000])


async def table_bytes(conn: asyncpg.Connection, parent: str) -> dict[str, int]:
    row = await conn.fetchrow(
        """
        SELECT coalesce(sum(pg_relation_size(c.oid)), 0)::int8 AS heap,
               coalesce(sum(pg_total_relation_size(c.oid) - pg_relation_size(c.oid) - pg_indexes_size(c.oid)), 0)::int8
                   AS toast,
               coalesce(sum(pg_indexes_size(c.oid)), 0)::int8 AS indexes
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = $1::regclass
        """,
        parent,
    )
    return dict(row)


async def run_sysmon(dsn_of, pg_pid: int, ds: Dataset) -> dict:
    import psutil

    from sysmon.core.storage import partitions, rollups, schema, sealing

    admin = await asyncpg.connect(dsn_of("postgres"))
    db = f"bench_{ds.name}"
    await admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    await admin.execute(f"CREATE DATABASE {db}")
    await admin.close()
    pool = await schema.create_pool(dsn_of(db), max_size=4)
    now = datetime.fromtimestamp(ds.end_ms / 1000, UTC) + timedelta(minutes=10)
    async with pool.acquire() as conn:
        await schema.migrate(conn, "plain")
        for t in (partitions.RAW, partitions.SEALED, partitions.ROLLUP_1M, partitions.ROLLUP_1H):
            await rollups.ensure_partitions(conn, t, now, timedelta(hours=8), timedelta(hours=1))
    t0 = time.perf_counter()
    await load_sysmon(pool, ds)
    load_s = time.perf_counter() - t0
    postmaster = psutil.Process(pg_pid)
    async with pool.acquire() as conn:
        await rollups.run_rollups(conn, now)
        pg0, me0, wall0 = tree_cpu_seconds(postmaster), time.process_time(), time.perf_counter()
        run = await sealing.seal_once(conn, now)
        pg1, me1, wall1 = tree_cpu_seconds(postmaster), time.process_time(), time.perf_counter()
        assert run.samples == ds.samples, (run.samples, ds.samples)
        left = await conn.fetchval("SELECT count(*) FROM samples_raw")
        await conn.execute("VACUUM (ANALYZE) samples_sealed")
        await conn.execute("CHECKPOINT")
        sizes = await table_bytes(conn, "samples_sealed")
        rows = await conn.fetchval("SELECT count(*) FROM samples_sealed")
        # What every block decodes to is what was written: the round trip, on the whole dataset.
        from sysmon.core.storage import raw
        ids = [r[0] for r in await conn.fetch("SELECT series_id FROM series")]
        back = await raw.read(conn, ids, datetime.fromtimestamp(ds.start_ms / 1000, UTC), now)
        assert sum(len(ts) for ts, _ in back.values()) == ds.samples
    await pool.close()
    total = sum(sizes.values())
    seal_cpu = (me1 - me0) + (pg1 - pg0)
    return {
        "samples": ds.samples, "series": len(ds.series), "blocks": rows, "left_in_raw": left,
        "bytes": total, "bytes_per_sample": total / ds.samples,
        "heap_per_sample": sizes["heap"] / ds.samples, "toast_per_sample": sizes["toast"] / ds.samples,
        "index_per_sample": sizes["indexes"] / ds.samples,
        "encoded_per_sample": run.encoded_bytes / ds.samples,
        "load_s": load_s, "seal_wall_s": wall1 - wall0,
        "seal_cpu_us_per_sample": seal_cpu / ds.samples * 1e6,
        "seal_aggregator_us_per_sample": (me1 - me0) / ds.samples * 1e6,
        "seal_postgres_us_per_sample": (pg1 - pg0) / ds.samples * 1e6,
        "seal_core_pct_at_steady": seal_cpu / ds.samples * STEADY_SAMPLES_PER_S * 100,
    }


# --- Prometheus ------------------------------------------------------------------------------------


def prom_name(s: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in s)


def write_openmetrics(ds: Dataset, path: Path) -> None:
    families: dict[str, list] = {}
    for key, data in ds.series.items():
        families.setdefault(key[1], []).append((key, data))
    with path.open("w") as f:
        for name, members in families.items():
            metric = prom_name(name)
            f.write(f"# TYPE {metric} gauge\n")
            for (host, _, attrs, _, _), (ts, vs) in members:
                labels = ",".join([f'host="{host}"'] + [f'{prom_name(k)}="{v}"' for k, v in attrs])
                prefix = f"{metric}{{{labels}}} "
                f.writelines(f"{prefix}{v!r} {t // 1000}.{t % 1000:03d}\n"
                             for t, v in zip(ts.tolist(), vs.tolist(), strict=True))
        f.write("# EOF\n")


def run_prometheus(ds: Dataset, work: Path) -> dict:
    tool = prometheus_tool("promtool")
    om = work / f"{ds.name}.om"
    out = work / f"{ds.name}-tsdb"
    t0 = time.perf_counter()
    write_openmetrics(ds, om)
    write_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    subprocess.run([tool, "tsdb", "create-blocks-from", "openmetrics", str(om), str(out)], check=True,
                   stdout=subprocess.DEVNULL)
    create_s = time.perf_counter() - t0
    chunks = index = 0
    blocks = 0
    for block in out.iterdir():
        if not (block / "meta.json").exists():
            continue
        blocks += 1
        meta = json.loads((block / "meta.json").read_text())
        index += (block / "index").stat().st_size
        chunks += sum(p.stat().st_size for p in (block / "chunks").iterdir())
        assert meta["stats"]["numSeries"] > 0
    om_bytes = om.stat().st_size
    om.unlink()
    total = chunks + index
    return {"version": prometheus_version(tool), "blocks": blocks, "bytes": total,
            "bytes_per_sample": total / ds.samples, "chunks_per_sample": chunks / ds.samples,
            "index_per_sample": index / ds.samples,
            "openmetrics_mib": om_bytes / 2**20, "write_s": write_s, "create_blocks_s": create_s}


# --- the codec alone -------------------------------------------------------------------------------


def compare_codecs(ds: Dataset) -> dict:
    """pcodec (what sealing uses) against byte-shuffle + zstd, per hour block of each series."""
    import zstandard

    from sysmon.core.storage import codec

    zc = zstandard.ZstdCompressor(level=3)
    zd = zstandard.ZstdDecompressor()

    def shuffle(a: np.ndarray) -> bytes:
        return np.ascontiguousarray(a).view(np.uint8).reshape(-1, 8).T.copy().tobytes()

    blocks = []
    for ts, vs in ds.series.values():
        hours = (ts // HOUR_MS)
        for h in np.unique(hours):
            sel = hours == h
            blocks.append((ts[sel], vs[sel]))
    pco_bytes = zstd_bytes = 0
    t0 = time.perf_counter()
    encoded = [codec.encode(ts, vs) for ts, vs in blocks]
    pco_enc = time.perf_counter() - t0
    pco_bytes = sum(b.encoded_bytes for b in encoded)
    t0 = time.perf_counter()
    for b in encoded:
        codec.decode(b.ts_data, b.val_data)
    pco_dec = time.perf_counter() - t0
    t0 = time.perf_counter()
    zs = [(zc.compress(shuffle(np.diff(ts, prepend=0))), zc.compress(shuffle(vs))) for ts, vs in blocks]
    zstd_enc = time.perf_counter() - t0
    zstd_bytes = sum(len(a) + len(b) for a, b in zs)
    t0 = time.perf_counter()
    for (a, b), (ts, _) in zip(zs, blocks, strict=True):
        n = len(ts)
        np.cumsum(np.frombuffer(zd.decompress(a), dtype=np.uint8).reshape(8, n).T.copy().view(np.int64).ravel())
        np.frombuffer(zd.decompress(b), dtype=np.uint8).reshape(8, n).T.copy().view(np.float64)
    zstd_dec = time.perf_counter() - t0
    n = ds.samples
    return {"pcodec_bytes_per_sample": pco_bytes / n, "zstd_bytes_per_sample": zstd_bytes / n,
            "pcodec_encode_ns": pco_enc / n * 1e9, "pcodec_decode_ns": pco_dec / n * 1e9,
            "zstd_encode_ns": zstd_enc / n * 1e9, "zstd_decode_ns": zstd_dec / n * 1e9}


# --- main ------------------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> None:
    from sysmon.core.embedded import EmbeddedPostgres, runtime_env

    runtime_env()
    work = Path(tempfile.mkdtemp(prefix="sysmon-storage-"))
    pg = EmbeddedPostgres(work / "pg")
    pg.start()
    figures: dict = {"bench": "storage", "hosts": args.hosts}
    rows: list = []
    try:
        pg_pid = int((pg.pgdata / "postmaster.pid").read_text().split()[0])
        hour = (int(time.time() * 1000) // HOUR_MS - args.sim_hours - 3) * HOUR_MS
        datasets = []
        if args.real and args.real.exists():
            datasets.append(real_dataset(args.real, args.hosts, hour))
        else:
            print(f"no recording at {args.real}: run bench/record_agent.py first for the real dataset", flush=True)
        datasets.append(sim_dataset(args.hosts, args.sim_series, args.sim_hours, hour))
        for ds in datasets:
            print(f"{ds.name}: {ds.samples:,} samples of {len(ds.series):,} series ...", flush=True)
            s = await run_sysmon(pg.dsn, pg_pid, ds)
            p = run_prometheus(ds, work)
            c = compare_codecs(ds)
            ratio = s["bytes_per_sample"] / p["bytes_per_sample"]
            figures[ds.name] = {"sysmon": s, "prometheus": p, "codec": c, "ratio": ratio}
            rows += [
                f"{ds.name}: {ds.samples:,} samples, {len(ds.series):,} series",
                ("sysmon sealed raw tier", f"{fmt(s['bytes_per_sample'], 'B/sample', 2)} "
                 f"(heap {s['heap_per_sample']:.2f} + TOAST {s['toast_per_sample']:.2f} + "
                 f"index {s['index_per_sample']:.2f}; encoded {s['encoded_per_sample']:.2f})"),
                (f"Prometheus {p['version']} TSDB block", f"{fmt(p['bytes_per_sample'], 'B/sample', 2)} "
                 f"(chunks {p['chunks_per_sample']:.2f} + index {p['index_per_sample']:.2f})"),
                ("ratio sysmon / Prometheus", f"{ratio:.2f}", f"<= {TARGET_RATIO}", ratio <= TARGET_RATIO),
                ("codec: pcodec / shuffle+zstd", f"{c['pcodec_bytes_per_sample']:.2f} / "
                 f"{c['zstd_bytes_per_sample']:.2f} B/sample"),
                ("codec encode ns/sample", f"pcodec {c['pcodec_encode_ns']:.0f}, zstd {c['zstd_encode_ns']:.0f}"),
                ("codec decode ns/sample", f"pcodec {c['pcodec_decode_ns']:.0f}, zstd {c['zstd_decode_ns']:.0f}"),
                ("sealing CPU per sample", f"{s['seal_cpu_us_per_sample']:.2f} us (aggregator "
                 f"{s['seal_aggregator_us_per_sample']:.2f} + PostgreSQL {s['seal_postgres_us_per_sample']:.2f})"),
                ("sealing at 12,000 samples/s", f"{s['seal_core_pct_at_steady']:.1f} % of a core",
                 f"<= {TARGET_SEAL_CORE_PCT:g} %", s["seal_core_pct_at_steady"] <= TARGET_SEAL_CORE_PCT),
                ("left in the open area", str(s["left_in_raw"]), "0", s["left_in_raw"] == 0),
            ]
    finally:
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    print_report("sealed raw tier against Prometheus, same samples, same run", rows, figures)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hosts", type=int, default=100)
    p.add_argument("--sim-series", type=int, default=60)
    p.add_argument("--sim-hours", type=int, default=2)
    p.add_argument("--real", type=Path, default=Path(__file__).parent / "data" / "agent-1h.json.gz")
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
