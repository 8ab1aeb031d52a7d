"""sysmon up | agent | aggregator | gateway | alerts | export sqs: the only place where components are wired together.

Every flag is also read from a SYSMON_* environment variable (--postgres-url is
SYSMON_POSTGRES_URL, and so on).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, CliApp, CliSubCommand, SettingsConfigDict

from sysmon.core.durations import Duration
from sysmon.core.settings import (
    AgentSettings,
    AggregatorClientSettings,
    AggregatorSettings,
    AlertsSettings,
    ConnectionSettings,
    GatewaySettings,
    Labels,
    OperatorSettings,
    default_host_id,
    is_loopback,
)
from sysmon.core.telemetry import serve_metrics, setup_logging
from sysmon.pipeline.settings import SqsExporterSettings

log = logging.getLogger("sysmon")


async def _until_signalled(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await main(stop)


def _run(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run until SIGINT/SIGTERM, on asyncio's own loop, or on uvloop with SYSMON_EVENT_LOOP=uvloop
    (installed separately: at a thousand collectors it measured no gain, see BENCHMARKS.md)."""
    choice = os.environ.get("SYSMON_EVENT_LOOP", "asyncio")
    if choice == "uvloop":
        try:
            import uvloop
        except ImportError:
            sys.exit("SYSMON_EVENT_LOOP=uvloop, but uvloop is not installed (pip install uvloop)")
        uvloop.run(_until_signalled(main))
    elif choice == "asyncio":
        asyncio.run(_until_signalled(main))
    else:
        sys.exit(f"SYSMON_EVENT_LOOP={choice!r}: use asyncio or uvloop")


def settle_garbage_collector() -> None:
    """For a long-running service, once started: what start-up made (modules, settings, schemas;
    most of the process's objects) is set aside from the cyclic collector, and a young generation
    is collected per 10,000 allocations rather than 700. An ingest stream allocates a few objects
    per sample; with the defaults the collector re-examined the start-up objects several times a
    second (about 1 % of a core at a thousand collectors)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


def _require_servers(command: str, settings: ConnectionSettings) -> None:
    if not settings.postgres_url or not settings.redis_url:
        sys.exit(f"sysmon {command} needs SYSMON_POSTGRES_URL and SYSMON_REDIS_URL "
                 "(sysmon up runs embedded servers for one machine)")


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

        _run(main)


class AggregatorCommand(AggregatorSettings):
    """Run the aggregator against external PostgreSQL and Redis."""

    def cli_cmd(self) -> None:
        setup_logging(self.log_level)
        _require_servers("aggregator", self)
        from sysmon.aggregator.server import Aggregator, ConfigurationError

        async def main(stop: asyncio.Event) -> None:
            try:
                agg = Aggregator(self, postgres_url=self.postgres_url, redis_url=self.redis_url)
                await agg.start()
            except ConfigurationError as e:
                sys.exit(str(e))
            settle_garbage_collector()
            await stop.wait()
            await agg.stop()

        _run(main)


class UpCommand(AggregatorSettings):
    """Run the whole platform on this machine, with embedded PostgreSQL and Redis by default."""

    data_dir: Path = Field(Path("~/.sysmon"), description="where embedded PostgreSQL and Redis keep their data")
    host_id: str = Field(default_factory=default_host_id, description="this machine's id for its collector")
    labels: Labels = Field(default_factory=dict, description="labels of this machine: env=dev,team=a")
    interval: Duration = Field(timedelta(seconds=5), description="collection interval of this machine's collector")
    port: int = Field(8080, ge=0, le=65535, description="port of the gateway (dashboard, REST, WebSocket)")
    http_host: str = Field("127.0.0.1", description="address the gateway binds; a non-loopback one needs a token")
    rules: list[Path] = Field(
        default_factory=list,
        description="AlertRule YAML file (the documents kubectl apply takes), applied through ConfigService; "
                    "repeatable",
    )
    alerts_listen: str = Field(
        "127.0.0.1:9465", description="host:port of the alerts service's /healthz, /readyz, /metrics"
    )
    http_listen: str = Field(
        "127.0.0.1:9201", description="host:port of the aggregator's HTTP ingest: Prometheus remote write "
                                      "(POST /api/v1/write) and OTLP/HTTP (POST /v1/metrics); empty: off"
    )

    def cli_cmd(self) -> None:
        setup_logging(self.log_level)
        _run(self.run)

    async def run(self, stop: asyncio.Event, *, ready: Callable[[dict[str, str]], None] | None = None) -> None:
        from sysmon.agent.collector import Collector
        from sysmon.aggregator.server import Aggregator, ConfigurationError
        from sysmon.core.embedded import EmbeddedPostgres, EmbeddedRedis, runtime_env
        from sysmon.core.rules_file import RulesFileError
        from sysmon.core.rules_sync import RulesApplyError, RulesFileSync

        runtime_env()
        data_dir = self.data_dir.expanduser().resolve()
        rules = RulesFileSync(self.rules, data_dir / "rules-applied.json") if self.rules else None
        try:
            # A bad rules file stops us before anything starts.
            rule_files = rules.load() if rules is not None else []
        except RulesFileError as e:
            sys.exit(f"rules: {e}")
        data_dir.mkdir(parents=True, exist_ok=True)
        pg = None if self.postgres_url else EmbeddedPostgres(data_dir)
        rs = None if self.redis_url else EmbeddedRedis(data_dir)
        agg = None
        gateway = None
        alerts = None
        try:
            dsn = self.postgres_url or await asyncio.to_thread(pg.start)  # type: ignore[union-attr]
            redis_url = self.redis_url or await asyncio.to_thread(rs.start)  # type: ignore[union-attr]
            self.http_listen = _free_or_any(self.http_listen, "remote write / OTLP/HTTP")
            self.listen = _free_or_any(self.listen, "aggregator (gRPC)")
            self.metrics_listen = _free_or_any(self.metrics_listen, "metrics")
            try:
                agg = Aggregator(self, postgres_url=dsn, redis_url=redis_url)
                await agg.start()
            except ConfigurationError as e:
                sys.exit(str(e))
            async with asyncio.timeout(120):
                await agg.storage.ready.wait()
            gateway = await _start_gateway(self, dsn, redis_url)
            if rules is not None:
                try:
                    await rules.apply(rule_files, AggregatorClientSettings(aggregator=agg.address, token=self.token))
                except RulesApplyError as e:
                    sys.exit(f"rules: {e}")
            alerts = await _start_alerts(self, agg.address, dsn, redis_url, gateway.url)
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
                "remote write": f"{agg.http.url}/api/v1/write" if agg.http else "off",
                "metrics": agg.metrics.url if agg.metrics else "off",
                "collector": f"{self.host_id}, every {self.interval.total_seconds():g}s",
                "storage": f"{agg.storage.mode} PostgreSQL",
                "dashboard": f"{gateway.url} (token {'required' if self.token else 'off: loopback'})",
                "alerts": f"{len(rule_files)} rules from files"
                          + (" (re-read when they change)" if rules else "") + "; "
                          + (f"{alerts.service.endpoint.url}/metrics" if alerts.service.endpoint else "no HTTP"),
            }
            print("sysmon is up", flush=True)
            for k, v in info.items():
                print(f"  {k:<18} {v}", flush=True)
            print("Press Ctrl-C to stop.", flush=True)
            if ready is not None:
                ready(info)
            collecting = asyncio.create_task(collector.run(stop))
            watching = asyncio.create_task(rules.watch(stop, _on_sighup())) if rules else None
            await stop.wait()
            print("stopping...", flush=True)
            for task in (collecting, watching):
                if task is not None:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        finally:
            if alerts is not None:
                await alerts.stop()
            if gateway is not None:
                await gateway.stop()
            if agg is not None:
                await agg.stop()
            if rs is not None:
                await asyncio.to_thread(rs.stop)
            if pg is not None:
                await asyncio.to_thread(pg.stop)
        print("sysmon stopped", flush=True)


def _free_or_any(listen: str, what: str) -> str:
    """`listen`, or any free port on its host when it is taken: on a laptop the default port may
    be another program's, and `sysmon up` prints where each listener ended up."""
    from sysmon.core.http_server import bind

    if not listen:
        return listen
    try:
        bind(listen).close()
    except OSError as e:
        host = listen.rpartition(":")[0] or "127.0.0.1"
        log.warning("%s: %s; using a free port", what, e)
        return f"{host}:0"
    return listen


async def _start_gateway(up: UpCommand, dsn: str, redis_url: str):  # -> sysmon.gateway.server.HttpServer
    from sysmon.gateway.app import ConfigurationError, create_app
    from sysmon.gateway.server import HttpServer

    settings = GatewaySettings(
        postgres_url=dsn, redis_url=redis_url, token=up.token,
        listen=_free_or_any(f"{up.http_host}:{up.port}", "dashboard"),
        hot_window=up.hot_window, raw_retention=up.raw_retention, rollup_1m_retention=up.rollup_1m_retention,
        rollup_1h_retention=up.rollup_1h_retention, log_level=up.log_level,
    )
    try:
        # One process: its process_* and python_* metrics are served by the aggregator's /metrics alone.
        server = HttpServer(create_app(settings, loopback_exempt=True, process_metrics=False), settings.listen)
    except (ConfigurationError, OSError) as e:
        sys.exit(f"gateway: {e}")
    await server.start()
    return server


def _on_sighup() -> asyncio.Event:
    """Set on SIGHUP: re-read the rules files now, as `kill -HUP` asks of Prometheus."""
    hup = asyncio.Event()
    # Only the main thread may take signals (tests run `up` in others; files are still watched).
    with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, hup.set)
    return hup


class _RunningAlerts:
    def __init__(self, service, task: asyncio.Task[None]):
        self.service = service
        self.task = task

    async def stop(self) -> None:
        self.service.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def _start_alerts(up: UpCommand, address: str, dsn: str, redis_url: str, external_url: str) -> _RunningAlerts:
    from sysmon.alerts.service import AlertsService

    def settings(listen: str) -> AlertsSettings:
        return AlertsSettings(aggregator=address, token=up.token, postgres_url=dsn, redis_url=redis_url,
                              listen=listen, external_url=external_url, log_level=up.log_level)

    try:
        service = AlertsService(settings(up.alerts_listen), postgres_url=dsn, redis_url=redis_url,
                                process_metrics=False)
    except OSError as e:
        # On a laptop the port may be taken by something else: any free one will do.
        host = up.alerts_listen.rpartition(":")[0] or "127.0.0.1"
        log.warning("alerts: %s; using a free port", e)
        service = AlertsService(settings(f"{host}:0"), postgres_url=dsn, redis_url=redis_url, process_metrics=False)
    running = _RunningAlerts(service, asyncio.create_task(service.run(), name="alerts"))
    ready = asyncio.create_task(service.ready.wait())
    # Ready, or the service ended (it failed), or a minute passed: whichever comes first.
    await asyncio.wait({ready, running.task}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
    if not ready.done():
        ready.cancel()
        waiting = ", ".join(service.readiness()[1])
        await running.stop()
        sys.exit(f"alerts: not ready within 60s (waiting for {waiting})")
    return running


class AlertsCommand(AlertsSettings):
    """Run the alerts service: rules from the aggregator's ConfigService, samples from the bus."""

    def cli_cmd(self) -> None:
        setup_logging(self.log_level)
        _require_servers("alerts", self)
        from sysmon.alerts.service import AlertsService

        async def main(stop: asyncio.Event) -> None:
            try:
                service = AlertsService(self, postgres_url=self.postgres_url, redis_url=self.redis_url)
            except OSError as e:
                sys.exit(f"alerts: {e}")
            log.info("alerts service starting: rules from %s, HTTP %s", self.aggregator,
                     service.endpoint.url if service.endpoint else "off")
            await service.run(stop)

        _run(main)


class GatewayCommand(GatewaySettings):
    """Run the gateway (REST, WebSocket, dashboard) against external PostgreSQL and Redis."""

    def cli_cmd(self) -> None:
        setup_logging(self.log_level)
        _require_servers("gateway", self)
        from sysmon.gateway.app import ConfigurationError, create_app
        from sysmon.gateway.server import HttpServer

        async def main(stop: asyncio.Event) -> None:
            try:
                server = HttpServer(create_app(self), self.listen)
            except (ConfigurationError, OSError) as e:
                sys.exit(str(e))
            await server.start()
            log.info("gateway serving on %s (auth %s)", server.url,
                     "on" if self.auth_configured else "off (--insecure-no-auth)")
            await stop.wait()
            await server.stop()

        _run(main)


def _redact(url: str) -> str:
    """Never print a password that came in a URL."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


class OperatorCommand(OperatorSettings):
    """Run the Kubernetes operator (MonitoredFleet, AlertRule) for one namespace."""

    def cli_cmd(self) -> None:
        setup_logging(self.log_level)
        from sysmon.operator.kube import KubeError
        from sysmon.operator.run import run

        try:
            self.served_namespace()
            _run(lambda stop: run(self, stop))
        except (ValueError, KubeError) as e:
            sys.exit(str(e))


class TokenIssueCommand(BaseSettings):
    """Print a sysmon token signed with SYSMON_TOKEN_SECRET: a collector's may speak only for its
    --host; a reader's may read (gateway REST and WebSocket); an admin's may also apply configuration."""

    model_config = SettingsConfigDict(env_prefix="SYSMON_", extra="ignore")

    scope: Literal["collector", "reader", "admin"] = Field(description="what the token may do")
    host: str | None = Field(None, description="the host id a collector token speaks for")
    name: str | None = Field(None, description="who a reader or admin token is for (its subject)")
    ttl: Duration | None = Field(
        timedelta(days=365), description="how long the token is valid; rotate the secret to revoke all at once"
    )
    token_secret: SecretStr | None = Field(None, description="the fleet secret (at least 32 bytes)")

    def cli_cmd(self) -> None:
        from sysmon.core.identity import Scope, tokens

        if self.token_secret is None or not self.token_secret.get_secret_value():
            sys.exit("set SYSMON_TOKEN_SECRET (the aggregator's and gateway's --token-secret) to sign tokens")
        try:
            print(tokens.issue(self.token_secret.get_secret_value(), Scope(self.scope), host=self.host,
                               name=self.name, ttl=self.ttl))
        except ValueError as e:
            sys.exit(str(e))


class TokenCommand(BaseSettings):
    """Credentials for collectors, readers and admins."""

    model_config = SettingsConfigDict(cli_kebab_case=True)

    issue: CliSubCommand[TokenIssueCommand]

    def cli_cmd(self) -> None:
        CliApp.run_subcommand(self)


class ExportSqsCommand(SqsExporterSettings):
    """Forward the samples topic to an SQS queue (for the Lambda pipeline), through its own consumer group."""

    def cli_cmd(self) -> None:
        setup_logging(self.log_level)
        if not self.redis_url:
            sys.exit("sysmon export sqs needs SYSMON_REDIS_URL (the bus it reads)")
        try:
            from sysmon.pipeline.exporter import SqsExporter
        except ImportError as e:
            sys.exit(f"sysmon export sqs needs the aws extra ({e}): pip install 'sysmon[aws]'")

        async def main(stop: asyncio.Event) -> None:
            endpoint = serve_metrics(self.metrics_listen)
            exporter = SqsExporter(self, redis_url=self.redis_url or "")
            log.info("exporting the samples topic to %s (group %s, consumer %s); metrics %s", self.queue_url,
                     self.consumer_group, self.consumer, endpoint.url if endpoint else "off")
            try:
                await exporter.run(stop)
            finally:
                if endpoint is not None:
                    endpoint.close()

        _run(main)


class ExportCommand(BaseSettings):
    """Forward samples out of sysmon: `sysmon export sqs --queue-url URL`."""

    sqs: CliSubCommand[ExportSqsCommand]

    def cli_cmd(self) -> None:
        CliApp.run_subcommand(self)


class Sysmon(BaseSettings):
    """sysmon: system monitoring for fleets of machines. `sysmon --version` prints the version."""

    model_config = SettingsConfigDict(cli_kebab_case=True, cli_prog_name="sysmon", cli_implicit_flags=True)

    up: CliSubCommand[UpCommand]
    agent: CliSubCommand[AgentCommand]
    aggregator: CliSubCommand[AggregatorCommand]
    gateway: CliSubCommand[GatewayCommand]
    alerts: CliSubCommand[AlertsCommand]
    operator: CliSubCommand[OperatorCommand]
    token: CliSubCommand[TokenCommand]
    export: CliSubCommand[ExportCommand]

    def cli_cmd(self) -> None:
        CliApp.run_subcommand(self)


def installed_version() -> str:
    """The version of the installed distribution (the wheel's, or the checkout's editable install)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sysmon")
    except PackageNotFoundError:
        return "unknown (not installed: pip install the project)"


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    # Outside the settings model: a field would also be read from a VERSION environment variable.
    if args == ["--version"]:
        print(f"sysmon {installed_version()}")
        return
    from sysmon.core.cli_help import HelpSource

    # Flags and defaults in --help as users type them (TOKEN, PATH, 24h), see sysmon.core.cli_help.
    source = HelpSource(Sysmon, cli_prog_name="sysmon", cli_kebab_case=True, cli_implicit_flags=True)
    CliApp.run(Sysmon, cli_args=args, cli_settings_source=source)


__all__ = ["is_loopback", "main"]
