"""`sysmon up`: one command runs everything on embedded servers, stops cleanly, keeps its data."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import asyncpg
import httpx
import pytest

from sysmon.core.embedded import free_port
from tests.helpers import wait_for


class Up:
    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, listen: dict[str, str] | None = None):
        self.data_dir = data_dir
        self.extra_env = env or {}
        self.grpc = f"127.0.0.1:{free_port()}"
        self.listen = {"--listen": self.grpc, "--metrics-listen": f"127.0.0.1:{free_port()}",
                       "--port": str(free_port()), "--alerts-listen": "127.0.0.1:0", "--http-listen": "127.0.0.1:0",
                       **(listen or {})}
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SYSMON_")} | self.extra_env
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sysmon", "up", "--data-dir", str(self.data_dir), "--interval", "200ms",
            "--host-id", "up-host", *(a for kv in self.listen.items() for a in kv),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
            start_new_session=True,  # a process group of its own, as a shell gives a command
        )
        self._reader = asyncio.create_task(self._read())
        await wait_for(lambda: "Press Ctrl-C to stop." in self.lines, within=90, message="sysmon up to be ready")

    async def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.lines.append(line.decode().rstrip("\n"))

    def info(self, key: str) -> str:
        for line in self.lines:
            m = re.match(rf"\s+{re.escape(key)}\s+(.*)", line)
            if m:
                return m.group(1)
        raise KeyError(key)

    async def interrupt(self) -> int:
        """Ctrl-C as a terminal sends it: to the whole process group, servers started by it included."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGINT)
        async with asyncio.timeout(60):
            code = await self.proc.wait()
        if self._reader:
            await self._reader
        return code


async def _each_metrics_endpoint_serves_its_own(up: Up) -> None:
    """One process, three /metrics: each family on one endpoint only, the process's on the aggregator's."""
    from prometheus_client.parser import text_string_to_metric_families

    urls = {"aggregator": up.info("metrics"), "gateway": up.info("dashboard").split()[0].rstrip("/") + "/metrics",
            "alerts": up.info("alerts").rsplit("; ", 1)[1]}
    families: dict[str, set[str]] = {}
    async with httpx.AsyncClient(timeout=10) as client:
        for component, url in urls.items():
            r = await client.get(url)
            assert r.status_code == 200, url
            families[component] = {f.name for f in text_string_to_metric_families(r.text)}
    for component, names in families.items():
        others = set().union(*(n for c, n in families.items() if c != component))
        assert not names & others, f"{component} serves {sorted(names & others)} as well"
        assert any(n.startswith(f"sysmon_{component}_") for n in names), component
    assert any(n.startswith("process_") for n in families["aggregator"])
    assert up.info("remote write").endswith("/api/v1/write")


async def _raw_rows(dsn: str) -> int:
    """Samples stored, in open rows or (an hour sealed while the test ran) in blocks."""
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(
            "SELECT (SELECT count(*) FROM samples_raw) + (SELECT coalesce(sum(count), 0) FROM samples_sealed)")
    finally:
        await conn.close()


@pytest.mark.slow
async def test_up_runs_everything_and_keeps_data_across_runs(short_dir: Path) -> None:
    data_dir = short_dir
    first = Up(data_dir)
    await first.start()
    try:
        assert first.info("aggregator (gRPC)").startswith(first.grpc)
        assert first.info("storage") == "plain PostgreSQL"
        dsn = first.info("PostgreSQL").removeprefix("embedded, ")
        assert first.info("Redis").startswith("embedded, unix://")
        rows = await wait_for(lambda: _raw_rows(dsn), within=30, message="samples stored by sysmon up")
        await _each_metrics_endpoint_serves_its_own(first)
    finally:
        code = await first.interrupt()
    assert code == 0, "\n".join(first.lines[-30:])
    assert first.lines[-1] == "sysmon stopped"
    # A first start on a fresh directory has nothing to warn about, and services stop before the
    # servers they write to: no component loses Redis or PostgreSQL mid-way.
    assert not [line for line in first.lines if "WARNING" in line or "ERROR" in line], "\n".join(first.lines)
    # Everything it started has stopped.
    assert not (data_dir / "postgres" / "postmaster.pid").exists()
    assert not (data_dir / "redis" / "socket-path").exists()

    second = Up(data_dir)
    await second.start()
    try:
        # The second run finds the first run's data.
        assert await _raw_rows(dsn) >= rows
        await wait_for(lambda: _newer_session(dsn), within=30, message="a second session stored")
    finally:
        assert await second.interrupt() == 0
    # Nor does a restart: Redis kept the hot tier, nothing was lost, nothing to warn about.
    assert not [line for line in second.lines if "WARNING" in line or "ERROR" in line], "\n".join(second.lines)


async def _newer_session(dsn: str) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT count(*) FROM ingest_sessions WHERE host_id = 'up-host'") >= 2
    finally:
        await conn.close()


@pytest.mark.slow
async def test_up_uses_given_servers(pg_dsn: str, redis_url: str, pool: asyncpg.Pool, short_dir: Path) -> None:
    data_dir = short_dir
    up = Up(data_dir, {"SYSMON_POSTGRES_URL": pg_dsn, "SYSMON_REDIS_URL": redis_url})
    await up.start()
    try:
        assert up.info("PostgreSQL") == pg_dsn
        assert up.info("Redis") == redis_url
        await wait_for(lambda: _raw_rows(pg_dsn), within=30, message="samples in the given database")
    finally:
        assert await up.interrupt() == 0
    assert not (data_dir / "postgres").exists()
    assert not (data_dir / "redis").exists()


async def test_ports_another_program_holds_are_replaced_by_free_ones_and_said(tmp_path: Path) -> None:
    """On a laptop a default port may be taken (a second `sysmon up`, another server): every
    listener moves to a free port, says so, and prints where it is; nothing is shared or crashes."""
    import socket

    held = []
    for _ in range(5):
        s = socket.socket()
        s.bind(("127.0.0.1", free_port()))
        s.listen()
        held.append(s)
    taken = [f"127.0.0.1:{s.getsockname()[1]}" for s in held]
    up = Up(tmp_path / "data", listen={"--listen": taken[0], "--metrics-listen": taken[1],
                                        "--port": taken[2].rpartition(":")[2], "--alerts-listen": taken[3],
                                        "--http-listen": taken[4]})
    try:
        await up.start()
        for what in ("aggregator (gRPC)", "metrics", "remote write", "dashboard", "alerts"):
            where = up.info(what)
            assert not any(t in where for t in taken), f"{what} is on a taken port: {where}"
        moved = [ln for ln in up.lines if "Address already in use; using a free port" in ln]
        assert len(moved) == 5, moved
        dashboard = up.info("dashboard").split()[0]
        async with httpx.AsyncClient(timeout=10) as client:
            assert (await client.get(dashboard)).status_code == 200
        assert await up.interrupt() == 0
        assert not any("Traceback" in ln for ln in up.lines)
    finally:
        for s in held:
            s.close()
        if up.proc is not None and up.proc.returncode is None:
            up.proc.kill()
