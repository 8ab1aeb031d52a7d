"""sysmon up | agent | aggregator: the only place where components are wired together.

Every flag is also read from a SYSMON_* environment variable (--postgres-url is
SYSMON_POSTGRES_URL, and so on).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, CliApp, CliSubCommand, SettingsConfigDict

from sysmon.core.durations import Duration
from sysmon.core.settings import AgentSettings, AggregatorSettings, Labels, default_host_id, is_loopback
from sysmon.core.telemetry import serve_metrics, setup_logging

log = logging.getLogger("sysmon")


async def _until_signalled(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await main(stop)


class AgentCommand(AgentSettings):
    """Run the collector for this machine."""

    log_level: str = "info"

    def cli_cmd(self) -> None:
        setup_logging(self.log_level)
        from sysmon.agent import telemetry
        from sysmon.agent.collector import Collector

        async def main(stop: asyncio.Event) -> None:
            collector = Collector(self)
            telemetry.register(collector)
            metrics = serve_metrics(self.metrics_listen)
            try:
                await collector.run(stop)
            finally:
                if metrics is not None:
                    metrics.close()

        asyncio.run(_until_signalled(main))


class AggregatorCommand(AggregatorSettings):
    """Run the aggregator against external PostgreSQL and Redis."""

    def cli_cmd(self) -> None:
        setup_logging(self.log_level)
        if not self.postgres_url or not self.redis_url:
            sys.exit("sysmon aggregator needs SYSMON_POSTGRES_URL and SYSMON_REDIS_URL "
                     "(sysmon up runs embedded servers for one machine)")
        from sysmon.aggregator.server import Aggregator, ConfigurationError

        async def main(stop: asyncio.Event) -> None:
            try:
                agg = Aggregator(self, postgres_url=self.postgres_url, redis_url=self.redis_url)
                await agg.start()
            except ConfigurationError as e:
                sys.exit(str(e))
            await stop.wait()
            await agg.stop()

        asyncio.run(_until_signalled(main))


class UpCommand(AggregatorSettings):
    """Run the whole platform on this machine, with embedded PostgreSQL and Redis by default."""

    data_dir: Path = Field(Path("~/.sysmon"), description="where embedded PostgreSQL and Redis keep their data")
    host_id: str = Field(default_factory=default_host_id, description="this machine's id for its collector")
    labels: Labels = Field(default_factory=dict, description="labels of this machine: env=dev,team=a")
    interval: Duration = Field(timedelta(seconds=5), description="collection interval of this machine's collector")

    def cli_cmd(self) -> None:
        setup_logging(self.log_level)
        asyncio.run(_until_signalled(self.run))

    async def run(self, stop: asyncio.Event, *, ready: Callable[[dict[str, str]], None] | None = None) -> None:
        from sysmon.agent.collector import Collector
        from sysmon.aggregator.server import Aggregator, ConfigurationError
        from sysmon.core.embedded import EmbeddedPostgres, EmbeddedRedis, runtime_env

        runtime_env()
        data_dir = self.data_dir.expanduser().resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        pg = None if self.postgres_url else EmbeddedPostgres(data_dir)
        rs = None if self.redis_url else EmbeddedRedis(data_dir)
        agg = None
        try:
            dsn = self.postgres_url or await asyncio.to_thread(pg.start)  # type: ignore[union-attr]
            redis_url = self.redis_url or await asyncio.to_thread(rs.start)  # type: ignore[union-attr]
            try:
                agg = Aggregator(self, postgres_url=dsn, redis_url=redis_url)
                await agg.start()
            except ConfigurationError as e:
                sys.exit(str(e))
            async with asyncio.timeout(120):
                await agg.storage.ready.wait()
            agent = AgentSettings(
                aggregator=agg.address, token=self.token, host_id=self.host_id, labels=self.labels,
                interval=self.interval,
            )
            collector = Collector(agent)
            info = {
                "data directory": str(data_dir),
                "PostgreSQL": ("embedded, " if pg else "") + _redact(dsn),
                "Redis": ("embedded, " if rs else "") + _redact(redis_url),
                "aggregator (gRPC)": f"{agg.address} (token {'required' if self.token else 'off: loopback'})",
                "metrics": agg.metrics.url if agg.metrics else "off",
                "collector": f"{self.host_id}, every {self.interval.total_seconds():g}s",
                "storage": f"{agg.storage.mode} PostgreSQL",
            }
            print("sysmon is up", flush=True)
            for k, v in info.items():
                print(f"  {k:<18} {v}", flush=True)
            print("Press Ctrl-C to stop.", flush=True)
            if ready is not None:
                ready(info)
            collecting = asyncio.create_task(collector.run(stop))
            await stop.wait()
            print("stopping...", flush=True)
            with contextlib.suppress(asyncio.CancelledError):
                await collecting
        finally:
            if agg is not None:
                await agg.stop()
            if rs is not None:
                await asyncio.to_thread(rs.stop)
            if pg is not None:
                await asyncio.to_thread(pg.stop)
        print("sysmon stopped", flush=True)


def _redact(url: str) -> str:
    """Never print a password that came in a URL."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


class Sysmon(BaseSettings):
    """sysmon: system monitoring for fleets of machines."""

    model_config = SettingsConfigDict(cli_kebab_case=True, cli_prog_name="sysmon", cli_implicit_flags=True)

    up: CliSubCommand[UpCommand]
    agent: CliSubCommand[AgentCommand]
    aggregator: CliSubCommand[AggregatorCommand]

    def cli_cmd(self) -> None:
        CliApp.run_subcommand(self)


def main(argv: list[str] | None = None) -> None:
    CliApp.run(Sysmon, cli_args=sys.argv[1:] if argv is None else argv)


__all__ = ["is_loopback", "main"]
