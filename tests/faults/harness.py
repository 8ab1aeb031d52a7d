"""The platform the fault scenarios break: embedded PostgreSQL and Redis, and as OS processes the
aggregator, the gateway, the alerts service and three collectors; in this process a probe host whose
value the test chooses, and a webhook receiver that records every notification.

What is counted, and how:
- Sampled: each collector process's own `sysmon_agent_batches` / `_samples` counters (read from its
  --metrics-listen), plus the final counts of sessions that ended (a collector restarted).
- Committed: `ingest_sessions.committed` (the seqs each session committed) and the samples of
  the hosts' series, open rows and sealed blocks alike (read through sysmon.core.storage.raw). A
  snapshot is taken only when every collector's buffer is empty (everything sampled so far was
  acknowledged, hence committed) and no collector sampled between the two reads that bracket the
  PostgreSQL queries, so both sides describe the same batches.
- Duplicated: stored samples (rows and block counts) beyond the first with the same (series_id, ts).
- Notifications: every alert of every webhook POST, identified by (fingerprint, status, startsAt);
  the same identity twice is a notification delivered twice. Every SysmonNoData that fires is false:
  the hosts sample throughout, only the platform's parts fail. Where samples stop for the whole fleet
  for longer than no-data-after (the aggregator frozen, Redis away), one SysmonFleetSilent page and its
  resolve are due instead.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import httpx
import redis.asyncio as aioredis
import redis.exceptions
from prometheus_client.parser import text_string_to_metric_families

from sysmon.agent.collector import Collector
from sysmon.agent.sampler import SeriesSpec
from sysmon.core.batch import samples_events
from sysmon.core.bus import SAMPLES, stream_key
from sysmon.core.config_model import spec_to_struct
from sysmon.core.embedded import EmbeddedPostgres, EmbeddedRedis, free_port, runtime_env
from sysmon.core.metrics import GAUGE, METRIC_GROUPS
from sysmon.core.settings import AgentSettings
from sysmon.core.storage import raw
from sysmon.pb.v1 import config_pb2, config_pb2_grpc
from tests.helpers import wait_for
from tests.integration.test_alerts import Receiver

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "faults"

AGENT_HOSTS = ("fault-a", "fault-b", "fault-c")
PROBE_HOST = "fault-probe"
PROBE_METRIC = "fault.probe"
PROBE_RULE = "fault-probe-high"
UPTIME_RULE = "fault-host-up"
NO_DATA = "SysmonNoData"
# One page for a silence of the whole fleet (the pipeline stopped), instead of a no-data page per host.
FLEET_SILENT = "SysmonFleetSilent"
INTERVAL_S = 1.0
# Shorter than every outage but the aggregator's kill: a platform that blamed hosts for its own
# silence would page during those.
NO_DATA_AFTER = "10s"

runtime_env()

_children: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    # Teardown normally ends every child; this covers an interpreter that exits without it.
    for p in list(_children):
        if p.poll() is None:
            with contextlib.suppress(OSError):
                p.send_signal(signal.SIGCONT)
                p.kill()


# --- processes ----------------------------------------------------------------------------------------


class Proc:
    """One `python -m sysmon ...` child running the worktree's code, its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path):
        self.name = name
        self.args = args
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None
        self.frozen = False

    def start(self) -> float:
        with self.log_path.open("ab") as log:
            log.write(f"--- start {time.strftime('%H:%M:%S')}: sysmon {' '.join(self.args)}\n".encode())
            log.flush()
            # A session of its own: signals meant for pytest's terminal never reach it.
            self.popen = subprocess.Popen([sys.executable, "-m", "sysmon", *self.args], cwd=ROOT, env=self.env,
                                          stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        _children.add(self.popen)
        self.frozen = False
        return time.monotonic()

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: signal.Signals) -> float:
        assert self.popen is not None
        self.popen.send_signal(sig)
        if sig == signal.SIGSTOP:
            self.frozen = True
        elif sig == signal.SIGCONT:
            self.frozen = False
        return time.monotonic()

    def kill(self) -> float:
        """SIGKILL, and reap it: the port is free when this returns."""
        assert self.popen is not None
        self.popen.kill()
        self.popen.wait(10)
        self.frozen = False
        return time.monotonic()

    def terminate(self, timeout: float = 15.0) -> None:
        if not self.alive:
            return
        assert self.popen is not None
        if self.frozen:
            self.popen.send_signal(signal.SIGCONT)
        self.popen.terminate()
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_lines(self, since: int = 0) -> list[str]:
        if not self.log_path.exists():
            return []
        with self.log_path.open("rb") as f:
            f.seek(since)
            return f.read().decode(errors="replace").splitlines()


# --- the probe host -----------------------------------------------------------------------------------

PROBE_SPEC = SeriesSpec(PROBE_METRIC, (), "1", GAUGE)


class ProbeSampler:
    """One series whose value the test sets: the rule on it fires at 1 and resolves at 0."""

    groups = frozenset(METRIC_GROUPS)
    errors = 0

    def __init__(self) -> None:
        self.value = 1.0

    def set_groups(self, groups: object) -> None:
        pass

    def sample(self) -> list[tuple[SeriesSpec, float]]:
        return [(PROBE_SPEC, self.value)]


# --- what collectors say of themselves ---------------------------------------------------------------


@dataclass(frozen=True)
class AgentStats:
    batches: int
    samples: int
    acked: int
    dropped: int
    rejected: int
    failures: int
    buffered: int
    connected: bool

    @classmethod
    def parse(cls, text: str) -> AgentStats:
        v: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                v[s.name] = s.value
        return cls(
            batches=int(v["sysmon_agent_batches_total"]), samples=int(v["sysmon_agent_samples_total"]),
            acked=int(v["sysmon_agent_acked_batches_total"]), dropped=int(v["sysmon_agent_dropped_batches_total"]),
            rejected=int(v["sysmon_agent_rejected_batches_total"]),
            failures=int(v["sysmon_agent_connection_failures_total"]),
            buffered=int(v["sysmon_agent_buffered_batches"]), connected=v["sysmon_agent_connected"] == 1,
        )

    @classmethod
    def of(cls, c: Collector) -> AgentStats:
        return cls(c.stats.batches, c.stats.samples, c.buffer.acked, c.buffer.dropped, c.buffer.rejected,
                   c.stats.failures, len(c.buffer), c.connected.is_set())


@dataclass(frozen=True)
class Count:
    batches: int
    samples: int


@dataclass
class Tally:
    """Sampled against stored, over every session so far, at one consistent moment."""

    expected_batches: dict[str, int]
    committed_batches: dict[str, int]
    expected_samples: dict[str, int]
    stored_samples: dict[str, int]  # distinct (series_id, ts)
    duplicate_rows: int
    gaps: list[str]
    dropped: int
    rejected: int

    @property
    def lost_batches(self) -> int:
        return sum(self.expected_batches[h] - self.committed_batches.get(h, 0) for h in self.expected_batches)

    @property
    def lost_samples(self) -> int:
        return sum(self.expected_samples[h] - self.stored_samples.get(h, 0) for h in self.expected_samples)

    def describe(self) -> str:
        return ", ".join(
            f"{h}: {self.committed_batches.get(h, 0)}/{self.expected_batches[h]} batches, "
            f"{self.stored_samples.get(h, 0)}/{self.expected_samples[h]} samples"
            for h in sorted(self.expected_batches)
        )


# --- notifications ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Note:
    at: float
    status: str
    alertname: str
    host: str
    fingerprint: str
    starts_at: str
    key: str
    summary: str

    @property
    def identity(self) -> tuple[str, str, str]:
        return (self.fingerprint, self.status, self.starts_at)

    def __str__(self) -> str:
        return f"{self.alertname}/{self.host} {self.status} (starts {self.starts_at}, key {self.key})"


def notes(receiver: Receiver) -> list[Note]:
    out = []
    for p in receiver.posts:
        if p.path != "/hook":
            continue
        for a in p.body["alerts"]:
            out.append(Note(p.at, a["status"], a["labels"].get("alertname", ""), a["labels"].get("host", ""),
                            a["fingerprint"], a["startsAt"], p.headers.get("idempotency-key", ""),
                            a["annotations"].get("summary", "")))
    return out


# --- the platform -------------------------------------------------------------------------------------


def _rule(url: str, **spec: Any) -> dict[str, Any]:
    # repeatInterval 0: a still-firing alert is never sent again, so any second copy is a duplicate.
    return {"repeatInterval": "0s", "annotations": {"summary": "{{ host }}: {{ value }}"},
            "actions": [{"webhook": {"url": f"{url}/hook"}}], **spec}


class Platform:
    def __init__(self) -> None:
        # Short: Unix socket paths (PostgreSQL's, Redis's) must stay under ~100 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="sf-", dir="/tmp"))
        self.pg = EmbeddedPostgres(self.root / "pg", tuning={"fsync": "off", "max_connections": "100"})
        self.redis = EmbeddedRedis(self.root / "redis")
        self.address = f"127.0.0.1:{free_port()}"
        self.aggregator_metrics = free_port()
        self.gateway_url = f"http://127.0.0.1:{free_port()}"
        self.alerts_port = free_port()
        self.agent_ports = {h: free_port() for h in AGENT_HOSTS}
        self.receiver = Receiver()
        self.http = httpx.AsyncClient(timeout=5)
        self.dsn = ""
        self.redis_url = ""
        self.procs: dict[str, Proc] = {}
        # Final counts of collector sessions that ended; live ones are read from their metrics.
        self.closed: dict[str, list[Count]] = {h: [] for h in (*AGENT_HOSTS, PROBE_HOST)}
        self.probe_sampler = ProbeSampler()
        self.probe: Collector | None = None
        self._probe_stop = asyncio.Event()
        self._probe_task: asyncio.Task[None] | None = None

    # --- start and stop ---

    async def start(self) -> None:
        self.dsn = await asyncio.to_thread(self.pg.start)
        self.redis_url = await asyncio.to_thread(self.redis.start)
        await self.receiver.start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SYSMON_")} | {
            # The worktree's code, not whatever `sysmon` the virtualenv installed.
            "PYTHONPATH": str(ROOT), "SYSMON_POSTGRES_URL": self.dsn, "SYSMON_REDIS_URL": self.redis_url,
        }
        logs = self.root / "logs"
        logs.mkdir()

        def proc(name: str, *args: str) -> None:
            self.procs[name] = Proc(name, list(args), env, logs)

        proc("aggregator", "aggregator", "--listen", self.address,
             "--metrics-listen", f"127.0.0.1:{self.aggregator_metrics}")
        proc("gateway", "gateway", "--listen", self.gateway_url.removeprefix("http://"), "--insecure-no-auth")
        proc("alerts", "alerts", "--aggregator", self.address, "--listen", f"127.0.0.1:{self.alerts_port}",
             "--no-data-after", NO_DATA_AFTER, "--external-url", self.gateway_url)
        for h, port in self.agent_ports.items():
            proc(h, "agent", "--aggregator", self.address, "--host-id", h, "--interval", f"{INTERVAL_S:g}s",
                 "--metrics-listen", f"127.0.0.1:{port}")

        self.procs["aggregator"].start()
        await self.started("aggregator", self.storage_up, "serving with PostgreSQL")
        await self.apply_rules()
        for name in ("gateway", "alerts", *AGENT_HOSTS):
            self.procs[name].start()
        self.start_probe()
        await self.started("gateway", self.gateway_ready, "ready")
        await self.started("alerts", self.alerts_ready, "ready")
        await wait_for(self.all_connected, within=30, interval=0.2, message="collectors connected")

        def baseline() -> bool:
            firing = {(n.alertname, n.host) for n in notes(self.receiver) if n.status == "firing"}
            return {(UPTIME_RULE, h) for h in AGENT_HOSTS} | {(PROBE_RULE, PROBE_HOST)} <= firing

        await wait_for(baseline, within=30, interval=0.2, message="each host's first alert fired")

    async def started(self, name: str, ready: Callable[[], Awaitable[bool]], what: str, within: float = 60) -> None:
        """Wait for a child to be `what`; if it exits first or the deadline passes, fail with its log's tail."""
        p = self.procs[name]

        async def check() -> bool:
            if not p.alive:
                raise AssertionError(f"{name} exited (code {p.popen and p.popen.poll()}) before it was {what}:\n"
                                     + "\n".join(p.log_lines()[-30:]))
            return await ready()

        try:
            await wait_for(check, within=within, interval=0.2, message=f"{name} {what}")
        except AssertionError as e:
            if "exited" in str(e):
                raise
            raise AssertionError(f"{e}; its log ends:\n" + "\n".join(p.log_lines()[-30:])) from None

    async def stop(self) -> None:
        await self.stop_probe(count=False)
        for p in self.procs.values():
            await asyncio.to_thread(p.terminate)
        await self.receiver.stop()
        await self.http.aclose()
        await asyncio.to_thread(self.redis.stop)
        await asyncio.to_thread(self.pg.stop)
        # Kept for reading after a failure; the rest (data directories) goes.
        shutil.rmtree(ARTIFACTS, ignore_errors=True)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for log in (self.root / "logs").glob("*.log"):
            shutil.copy(log, ARTIFACTS / log.name)
        shutil.rmtree(self.root, ignore_errors=True)

    def start_probe(self) -> None:
        settings = AgentSettings(aggregator=self.address, host_id=PROBE_HOST, interval=f"{INTERVAL_S:g}s")
        self.probe = Collector(settings, sampler=self.probe_sampler)  # type: ignore[arg-type]
        self._probe_stop = asyncio.Event()
        self._probe_task = asyncio.create_task(self.probe.run(self._probe_stop), name="probe collector")

    async def stop_probe(self, count: bool = True) -> None:
        if self._probe_task is None or self.probe is None:
            return
        self._probe_stop.set()
        await asyncio.wait_for(self._probe_task, 30)
        if count:
            self.closed[PROBE_HOST].append(Count(self.probe.stats.batches, self.probe.stats.samples))
        self._probe_task = None

    async def apply_rules(self) -> None:
        url = self.receiver.url
        rules = {
            PROBE_RULE: _rule(url, metric=PROBE_METRIC, window="10s", condition={"op": ">", "threshold": 0.5}),
            UPTIME_RULE: _rule(url, metric="system.uptime", condition={"op": ">", "threshold": 0}),
        }
        request = config_pb2.ApplyRequest(upserts=[
            config_pb2.Resource(kind="AlertRule", name=name, generation=1, spec=spec_to_struct(spec))
            for name, spec in rules.items()
        ])
        async with grpc.aio.insecure_channel(self.address) as channel:
            await config_pb2_grpc.ConfigServiceStub(channel).Apply(request, timeout=30)

    # --- reading the parts ---

    async def _get(self, url: str) -> httpx.Response | None:
        try:
            return await self.http.get(url, timeout=2)
        except httpx.HTTPError:
            return None

    async def metrics(self, port: int) -> dict[str, float] | None:
        r = await self._get(f"http://127.0.0.1:{port}/metrics")
        if r is None or r.status_code != 200:
            return None
        return {s.name: s.value for f in text_string_to_metric_families(r.text) for s in f.samples if not s.labels}

    async def storage_up(self) -> bool:
        m = await self.metrics(self.aggregator_metrics)
        return m is not None and m.get("sysmon_aggregator_storage_up") == 1

    async def gateway_ready(self) -> bool:
        r = await self._get(f"{self.gateway_url}/readyz")
        return r is not None and r.status_code == 200

    async def alerts_ready(self) -> bool:
        r = await self._get(f"http://127.0.0.1:{self.alerts_port}/readyz")
        return r is not None and r.status_code == 200

    async def agent(self, host: str) -> AgentStats | None:
        if host == PROBE_HOST:
            return AgentStats.of(self.probe) if self.probe is not None and self._probe_task else None
        r = await self._get(f"http://127.0.0.1:{self.agent_ports[host]}/metrics")
        if r is None or r.status_code != 200:
            return None
        return AgentStats.parse(r.text)

    async def agents(self) -> dict[str, AgentStats | None]:
        hosts = [h for h in AGENT_HOSTS if self.procs[h].alive] + [PROBE_HOST]
        stats = await asyncio.gather(*(self.agent(h) for h in hosts))
        return dict(zip(hosts, stats, strict=True))

    async def all_connected(self) -> bool:
        stats = await self.agents()
        return all(s is not None and s.connected for s in stats.values())

    async def drained(self) -> bool:
        stats = await self.agents()
        return all(s is not None and s.buffered == 0 for s in stats.values())

    async def outbox_empty(self) -> bool:
        try:
            conn = await asyncpg.connect(self.dsn, timeout=5)
        except (OSError, asyncpg.PostgresError):
            return False
        try:
            return await conn.fetchval(
                "SELECT count(*) FROM alert_notifications WHERE delivered_at IS NULL AND gave_up_at IS NULL") == 0
        finally:
            await conn.close()

    # --- counting ---

    async def tally(self, within: float = 90.0) -> Tally:
        """Sampled against committed once everything sampled is acknowledged (see the module's doc)."""
        deadline = time.monotonic() + within
        waiting = "no answer yet"
        while True:
            before = await self.agents()
            if all(s is not None and s.buffered == 0 for s in before.values()):
                stored = await self._stored()
                after = await self.agents()
                if all(a is not None and b is not None and a.batches == b.batches
                       for a, b in zip(after.values(), before.values(), strict=True)):
                    return self._compose(before, *stored)  # type: ignore[arg-type]
            else:
                waiting = ", ".join(f"{h}: {'no answer' if s is None else f'{s.buffered} buffered'}"
                                    for h, s in before.items())
            if time.monotonic() > deadline:
                raise AssertionError(f"the pipeline did not drain within {within:g}s ({waiting})")
            await asyncio.sleep(0.1)

    async def _stored(self) -> tuple[list[asyncpg.Record], list[dict[str, Any]]]:
        hosts = [*AGENT_HOSTS, PROBE_HOST]
        conn = await asyncpg.connect(self.dsn, timeout=10)
        try:
            sessions = await conn.fetch(
                """
                SELECT host_id, session_id, committed::text AS ranges,
                       coalesce((SELECT sum(upper(r) - lower(r)) FROM unnest(committed) AS r), 0)::int8 AS n,
                       committed = int8multirange(int8range(1, upper(committed))) AS whole
                FROM ingest_sessions WHERE host_id = ANY($1::text[])
                """,
                hosts,
            )
            # Stored rows wherever they are (open rows and sealed blocks, if an hour closed meanwhile),
            # and distinct (series, time) through the raw tier's own reader, which sees both.
            rows = {r["host_id"]: r["n"] for r in await conn.fetch(
                """
                SELECT s.host_id, sum(n)::int8 AS n FROM (
                    SELECT series_id, count(*) AS n FROM samples_raw GROUP BY series_id
                    UNION ALL SELECT series_id, sum(count) FROM samples_sealed GROUP BY series_id
                ) k JOIN series s USING (series_id) WHERE s.host_id = ANY($1::text[]) GROUP BY s.host_id
                """,
                hosts)}
            host_of = {r["series_id"]: r["host_id"] for r in await conn.fetch(
                "SELECT series_id, host_id FROM series WHERE host_id = ANY($1::text[])", hosts)}
            now = datetime.now(UTC)
            distinct: dict[str, int] = dict.fromkeys(rows, 0)
            for sid, (ts, _) in (await raw.read(conn, list(host_of), now - timedelta(days=2),
                                                now + timedelta(hours=1))).items():
                distinct[host_of[sid]] = distinct.get(host_of[sid], 0) + len(ts)
            samples = [{"host_id": h, "rows": n, "distinct_rows": distinct.get(h, 0)} for h, n in rows.items()]
        finally:
            await conn.close()
        return sessions, samples

    def _compose(self, live: dict[str, AgentStats], sessions: list[asyncpg.Record],
                 samples: list[dict[str, Any]]) -> Tally:
        expected_b: dict[str, int] = {}
        expected_s: dict[str, int] = {}
        for h, ended in self.closed.items():
            expected_b[h] = sum(c.batches for c in ended)
            expected_s[h] = sum(c.samples for c in ended)
        for h, s in live.items():
            expected_b[h] += s.batches
            expected_s[h] += s.samples
        committed: dict[str, int] = {}
        gaps = []
        for r in sessions:
            committed[r["host_id"]] = committed.get(r["host_id"], 0) + r["n"]
            if r["n"] and not r["whole"]:
                gaps.append(f"{r['host_id']}/{r['session_id'][:8]} committed {r['ranges']}")
        return Tally(
            expected_batches=expected_b, committed_batches=committed, expected_samples=expected_s,
            stored_samples={r["host_id"]: r["distinct_rows"] for r in samples},
            duplicate_rows=sum(r["rows"] - r["distinct_rows"] for r in samples), gaps=gaps,
            dropped=sum(s.dropped for s in live.values()), rejected=sum(s.rejected for s in live.values()),
        )

    async def alerts_caught_up(self) -> bool:
        """The alerts service has consumed samples and is less than two intervals behind the bus."""
        m = await self.metrics(self.alerts_port)
        return (m is not None and m.get("sysmon_alerts_samples_total", 0) > 0
                and m.get("sysmon_alerts_lag_seconds", 1e9) < 2 * INTERVAL_S)

    async def probe_published(self, value: float, since_ms: int) -> bool:
        """A probe sample of `value` taken after `since_ms` is on the bus (the hot tier has it too)."""
        r = aioredis.from_url(self.redis_url)
        try:
            entries = await r.xrevrange(stream_key(SAMPLES), count=200)
        except redis.exceptions.RedisError:
            return False
        finally:
            await r.aclose()
        for _, fields in entries:
            for ev in samples_events(fields[b"p"]):
                if ev.host_id == PROBE_HOST and any(
                        f.time_unix_ms > since_ms and value in f.values for f in ev.frames):
                    return True
        return False

    async def redis_keys(self) -> dict[str, int]:
        """How many keys of each kind Redis holds (hot:series, hot:frames, bus, ...)."""
        r = aioredis.from_url(self.redis_url)
        try:
            kinds: dict[str, int] = {}
            async for key in r.scan_iter(count=1000):
                kind = ":".join(key.decode().split(":")[:2])
                kinds[kind] = kinds.get(kind, 0) + 1
            return dict(sorted(kinds.items()))
        finally:
            await r.aclose()

    async def hot_tier_whole(self, since_ms: int) -> bool:
        """What the dashboard reads from Redis is there again: each collector's series in a query over the
        last 2 minutes, with samples taken since `since_ms`, and every host `up`."""
        r = await self._get(f"{self.gateway_url}/api/v1/query?metric=system.uptime&start=now-2m")
        if r is None or r.status_code != 200:
            return False
        body = r.json()
        fresh = {s["host"] for s in body["series"] if s["timestamps"] and s["timestamps"][-1] >= since_ms - 1000}
        if body["tier"] != "hot" or not set(AGENT_HOSTS) <= fresh:
            return False
        r = await self._get(f"{self.gateway_url}/api/v1/hosts")
        if r is None or r.status_code != 200:
            return False
        status = {h["host"]: h["status"] for h in r.json()["hosts"]}
        return all(status.get(h) == "up" for h in (*AGENT_HOSTS, PROBE_HOST))

    # --- faults ---

    async def heal(self) -> None:
        """Whatever an earlier scenario left broken (it failed half-way) runs again."""
        if self.pg._server is None:
            await asyncio.to_thread(self.pg.start)
        if self.redis._proc is None or self.redis._proc.poll() is not None:
            await asyncio.to_thread(self.redis.start)
        for p in self.procs.values():
            if p.frozen:
                p.signal(signal.SIGCONT)
            if not p.alive:
                p.start()

    def kill_redis(self, *, empty: bool) -> float:
        """SIGKILL redis-server; with `empty`, remove its data files so that it comes back with nothing."""
        proc = self.redis._proc
        assert proc is not None
        proc.kill()
        proc.wait(10)
        killed_at = time.monotonic()
        if empty:
            for name in ("appendonly.aof", "dump.rdb", "appendonlydir"):
                path = self.redis.dir / name
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
        return killed_at

    async def start_redis(self) -> float:
        url = await asyncio.to_thread(self.redis.start)
        # Same socket: every client's URL stays right.
        assert url == self.redis_url, f"Redis came back elsewhere: {url} (was {self.redis_url})"
        return time.monotonic()

    def flip_probe(self) -> str:
        """Change the probe's value; returns the notification that must follow."""
        self.probe_sampler.value = 0.0 if self.probe_sampler.value else 1.0
        return "firing" if self.probe_sampler.value else "resolved"

    async def new_commits(self, since: float, within: float = 90.0) -> float | None:
        """Seconds from `since` until every collector has had a batch acknowledged (committed) that
        it had not when this was called."""
        base = {h: (s.acked if s is not None else 0) for h, s in (await self.agents()).items()}

        async def all_new() -> bool:
            now = await self.agents()
            return all(s is not None and s.acked > base.get(h, 0) for h, s in now.items())

        return await seconds_until(all_new, since, within)


# --- measuring ----------------------------------------------------------------------------------------


async def seconds_until(predicate: Callable[[], Any] | Callable[[], Awaitable[Any]], since: float,
                        within: float) -> float | None:
    """Seconds from `since` (monotonic) until `predicate` holds; None when it did not within `within`."""
    try:
        await wait_for(predicate, within=within, interval=0.1)
    except AssertionError:
        return None
    return time.monotonic() - since


@dataclass
class Result:
    scenario: str
    outage_s: float = 0.0
    lost_batches: int | None = None
    lost_samples: int | None = None
    duplicated: int | None = None
    recovery_s: float | None = None
    recovery_what: str = ""
    figures: dict[str, str] = field(default_factory=dict)
    sent_twice: list[Note] = field(default_factory=list)
    false_no_data: list[Note] = field(default_factory=list)
    fleet_silent: list[Note] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        def n(v: int | None) -> str:
            return "n/a" if v is None else str(v)

        rec = "never" if self.recovery_s is None else f"{self.recovery_s:.1f}s"
        extra = "".join(f", {k} {v}" for k, v in self.figures.items())
        return (f"FAULT {self.scenario}: outage {self.outage_s:.1f}s, lost {n(self.lost_batches)} batches / "
                f"{n(self.lost_samples)} samples, duplicated {n(self.duplicated)}, recovery {rec} "
                f"({self.recovery_what}){extra}, notified twice {len(self.sent_twice)}, "
                f"false no-data {len(self.false_no_data)}, fleet-silent "
                f"{'/'.join(n.status for n in self.fleet_silent) or 'none'}")

    def timing(self, key: str, seconds: float | None) -> float | None:
        self.figures[key] = "never" if seconds is None else f"{seconds:.1f}s"
        return seconds


class Scenario:
    """Bookkeeping around one fault: counts and notifications before, the same after, the difference
    judged, one line printed, and the log lines of the parts that misbehaved kept for the report."""

    def __init__(self, platform: Platform, name: str):
        self.p = platform
        self.result = Result(name)
        self.before: Tally | None = None
        self.t0 = 0.0
        self.log_marks: dict[str, int] = {}

    async def __aenter__(self) -> Scenario:
        await self.p.heal()
        self.before = await self.p.tally()
        self.t0 = time.monotonic()
        self.log_marks = {name: proc.log_size() for name, proc in self.p.procs.items()}
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    def problem(self, text: str) -> None:
        self.result.problems.append(text)

    async def expect_probe(self, status: str, within: float = 45.0) -> None:
        """The probe's transition of this scenario arrives (once: duplicates are judged in finish)."""
        def arrived() -> bool:
            return any(n.alertname == PROBE_RULE and n.status == status and n.at >= self.t0
                       for n in notes(self.p.receiver))

        if await seconds_until(arrived, self.t0, within) is None:
            self.problem(f"the probe's {status} notification did not arrive within {within:g}s")

    async def finish(self, *, drain_within: float = 90.0, fleet_silent: bool = False) -> Result:
        """`fleet_silent`: samples stopped for the whole fleet longer than no-data-after, so one
        SysmonFleetSilent page and its resolve are due (and no per-host page); otherwise none."""
        r = self.result
        if fleet_silent:
            def resolved() -> bool:
                return any(n.alertname == FLEET_SILENT and n.status == "resolved" and n.at >= self.t0
                           for n in notes(self.p.receiver))

            if await seconds_until(resolved, self.t0, 60) is None:
                self.problem("no SysmonFleetSilent resolve within 60s")
        if await seconds_until(self.p.outbox_empty, self.t0, 30) is None:
            self.problem("the alerts outbox still holds undelivered notifications after 30s")
        try:
            after = await self.p.tally(within=drain_within)
        except AssertionError as e:
            self.problem(str(e))
            after = None
        if after is not None and self.before is not None:
            r.lost_batches = after.lost_batches - self.before.lost_batches
            r.lost_samples = after.lost_samples - self.before.lost_samples
            r.duplicated = after.duplicate_rows - self.before.duplicate_rows
            if r.lost_batches or r.lost_samples:
                self.problem(f"lost {r.lost_batches} batches / {r.lost_samples} samples: {after.describe()}")
            if r.duplicated:
                self.problem(f"{r.duplicated} samples stored twice")
            new_gaps = sorted(set(after.gaps) - set(self.before.gaps))
            if new_gaps:
                self.problem(f"sessions with missing seqs: {new_gaps}")
            if after.dropped != self.before.dropped or after.rejected != self.before.rejected:
                self.problem(f"collectors dropped {after.dropped - self.before.dropped} and had "
                             f"{after.rejected - self.before.rejected} rejected batches")
        seen: set[tuple[str, str, str]] = set()
        for n in notes(self.p.receiver):
            if n.identity in seen and n.at >= self.t0:
                r.sent_twice.append(n)
            seen.add(n.identity)
            if n.at >= self.t0 and n.alertname == NO_DATA and n.status == "firing":
                r.false_no_data.append(n)
            if n.at >= self.t0 and n.alertname == FLEET_SILENT:
                r.fleet_silent.append(n)
        probe = [n for n in notes(self.p.receiver) if n.alertname == PROBE_RULE and n.at >= self.t0]
        if len(probe) > 1:
            self.problem("the probe was notified more than once: " + "; ".join(map(str, probe)))
        if r.sent_twice:
            self.problem("notified twice: " + "; ".join(map(str, r.sent_twice)))
        if r.false_no_data:
            self.problem(f"false no-data pages for {sorted(n.host for n in r.false_no_data)} (first: "
                         f"{r.false_no_data[0].summary!r}, {r.false_no_data[0].at - self.t0:.1f}s into the scenario)")
        want = ["firing", "resolved"] if fleet_silent else []
        if [n.status for n in r.fleet_silent] != want:
            self.problem(f"SysmonFleetSilent notifications {[n.status for n in r.fleet_silent]}, expected {want}")
        if r.recovery_s is None and r.recovery_what:
            self.problem(f"no recovery ({r.recovery_what})")
        # A keepalive policy the two sides disagree on shows as the aggregator's GOAWAY to an idle
        # stream (the alerts service's rules): a reconnect every 45 s, nowhere else visible.
        for name, proc in self.p.procs.items():
            calm = [ln for ln in proc.log_lines(self.log_marks.get(name, 0)) if "too_many_pings" in ln]
            if calm:
                self.problem(f"{name} was sent GOAWAY too_many_pings {len(calm)} times")
        print(r.line(), flush=True)
        return r

    def logs(self, *names: str, levels: tuple[str, ...] = ("WARNING", "ERROR"), last: int = 12) -> str:
        out = []
        for name in names:
            lines = [ln for ln in self.p.procs[name].log_lines(self.log_marks.get(name, 0))
                     if any(f" {lv} " in ln for lv in levels) or ln.startswith("---")]
            out += [f"  [{name}] {ln}" for ln in lines[-last:]]
        return "\n".join(out)

    def verdict(self, *log_names: str) -> None:
        if self.result.problems:
            details = "\n".join(f"- {p}" for p in self.result.problems)
            raise AssertionError(f"{self.result.scenario}:\n{details}\nlogs since the scenario began:\n"
                                 f"{self.logs(*log_names)}")
