"""The aggregator process: gRPC services, health, storage, background jobs; start and stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
import redis.asyncio as aioredis
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc

from sysmon.aggregator import maintenance, otlp
from sysmon.aggregator.admission import Admission
from sysmon.aggregator.auth import AuthInterceptor, server_credentials
from sysmon.aggregator.config import ConfigServicer, ConfigStore
from sysmon.aggregator.control import ControlHub, ControlServicer, route_commands
from sysmon.aggregator.http_ingest import IngestApp, IngestHttpServer
from sysmon.aggregator.ingest import Ingest
from sysmon.aggregator.push import MetricsServicer
from sysmon.aggregator.receipts import Receipts
from sysmon.aggregator.storage import Storage
from sysmon.core import bus as busmod
from sysmon.core.hot import HotTier
from sysmon.core.identity import Authenticator
from sysmon.core.settings import AggregatorSettings, is_loopback
from sysmon.core.telemetry import ComponentMetrics, MetricsEndpoint, serve_metrics
from sysmon.pb.v1 import (
    config_pb2,
    config_pb2_grpc,
    control_pb2,
    control_pb2_grpc,
    metrics_pb2,
    metrics_pb2_grpc,
)

log = logging.getLogger(__name__)

SERVICES = (
    metrics_pb2.DESCRIPTOR.services_by_name["MetricsService"].full_name,
    control_pb2.DESCRIPTOR.services_by_name["ControlService"].full_name,
    config_pb2.DESCRIPTOR.services_by_name["ConfigService"].full_name,
    metrics_service_pb2.DESCRIPTOR.services_by_name["MetricsService"].full_name,
)


class ConfigurationError(Exception):
    pass


def _auth_summary(a: Authenticator) -> str:
    kinds = [name for name, on in (("fleet token", a.fleet_token), ("sysmon tokens", a.secrets),
                                   ("Kubernetes ServiceAccount tokens", a.reviewer),
                                   ("client certificates", a.certificate_hosts)) if on]
    return ", ".join(kinds) or "off"


class Aggregator:
    def __init__(self, settings: AggregatorSettings, *, postgres_url: str, redis_url: str | None):
        if settings.client_cert_hosts and not settings.tls_client_ca:
            raise ConfigurationError("--client-cert-hosts needs mutual TLS: set --tls-client-ca")
        try:
            self.authenticator = Authenticator.from_settings(settings, certificate_hosts=settings.client_cert_hosts)
        except ValueError as e:
            raise ConfigurationError(str(e)) from e
        for listen in (settings.listen, settings.http_listen):
            if listen and not self.authenticator.enabled and not is_loopback(listen) and not settings.insecure_no_auth:
                raise ConfigurationError(
                    f"refusing to listen on {listen} without authentication: set SYSMON_TOKEN, "
                    "SYSMON_TOKEN_SECRET or SYSMON_KUBE_AUDIENCE (or --insecure-no-auth for a trusted network)"
                )
        self.settings = settings
        self.limits = settings.limits()
        self.storage = Storage(postgres_url, settings)
        self.redis = aioredis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5) if redis_url else None
        self.hot = HotTier(self.redis, int(settings.hot_window.total_seconds() * 1000)) if self.redis else None
        self.bus = busmod.from_settings(settings, self.redis, client_id=f"sysmon-aggregator-{settings.aggregator_id}")
        self.hub = ControlHub()
        # Acknowledgements go to collectors' control streams, or to an HTTP request waiting for them.
        self.receipts = Receipts(self.hub)
        self.ingest = Ingest(
            self.storage, self.hot, self.bus, self.receipts,
            writers=settings.writers,
            queue_samples=settings.writer_queue_samples,
            commit_max_samples=settings.commit_max_samples,
            commit_linger_s=settings.commit_linger.total_seconds(),
            live_linger_s=settings.live_linger.total_seconds(),
        )
        self.config = ConfigStore(self.storage, self.bus)
        self.health = health.aio.HealthServicer()
        self.port: int | None = None
        self.metrics: MetricsEndpoint | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._server: grpc.aio.Server | None = None
        self.health_port: int | None = None
        self._health_server: grpc.aio.Server | None = None
        self.http: IngestHttpServer | None = None

    async def start(self) -> None:
        s = self.settings
        self.auth = AuthInterceptor(self.authenticator)
        # Always installed: with authentication off it still answers malformed messages.
        interceptors = [self.auth]
        server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", s.max_message_bytes),
                ("grpc.max_send_message_length", s.max_message_bytes),
                # Find dead collectors (and let live ones keep idle connections through proxies).
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.http2.ping_timeout_ms", 10_000),
                # The enforcement policy: clients may ping every 10 s (they ping every 15 s, see
                # sysmon.core.client), with or without calls; more often is answered with GOAWAY.
                ("grpc.keepalive_permit_without_calls", 1),
                # (The name grpc core reads: "min_recv_ping_interval..." was ignored, leaving its 5 min
                # default, and the alerts service's idle rule stream was cut every 45 s.)
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                ("grpc.http2.max_ping_strikes", 2),
                # A port another server holds is an error, not shared with it (grpc's default
                # SO_REUSEPORT lets a second aggregator bind the port and take half the collectors).
                ("grpc.so_reuseport", 0),
            ],
        )
        push = MetricsServicer(self.ingest, self.hub, self.limits)
        metrics_pb2_grpc.add_MetricsServiceServicer_to_server(push, server)
        # Remote write and OTLP share Push's per-host limits: one host, one budget, however it sends.
        self.admission = Admission(self.ingest, self.receipts, self.limits, push.host_series, push.budget)
        # One decoder for OTLP/gRPC and OTLP/HTTP: the running totals of delta sums are the same.
        otlp_decoder = otlp.Decoder(self.admission.series)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(
            otlp.OtlpMetricsServicer(self.admission, otlp_decoder), server)
        if s.http_listen:
            try:
                self.http = IngestHttpServer(s.http_listen, IngestApp(self.admission, self.authenticator, otlp_decoder),
                                             tls_cert=s.tls_cert, tls_key=s.tls_key, tls_client_ca=s.tls_client_ca)
            except OSError as e:
                raise ConfigurationError(str(e)) from e
        control_pb2_grpc.add_ControlServiceServicer_to_server(
            ControlServicer(self.hub, self.storage, self.bus, self.limits, s.aggregator_id,
                            on_session_end=self.ingest.forget_session, on_identity=self.auth.note_fleet_token),
            server,
        )
        config_pb2_grpc.add_ConfigServiceServicer_to_server(ConfigServicer(self.config), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        if s.tls_cert and s.tls_key:
            self.port = server.add_secure_port(s.listen, server_credentials(s.tls_cert, s.tls_key, s.tls_client_ca))
        else:
            self.port = server.add_insecure_port(s.listen)
        if not self.port:
            raise ConfigurationError(f"cannot listen on {s.listen}")
        health_server = None
        if s.health_listen:
            # The kubelet's gRPC probe speaks neither TLS nor mutual TLS. A listener of its own, with
            # the health service and nothing else, answers it without opening the other services
            # (or the token) to plaintext. Same servicer: both ports report the same status.
            health_server = grpc.aio.server()
            health_pb2_grpc.add_HealthServicer_to_server(self.health, health_server)
            self.health_port = health_server.add_insecure_port(s.health_listen)
            if not self.health_port:
                raise ConfigurationError(f"cannot listen on {s.health_listen}")
        await server.start()
        self._server = server
        if health_server is not None:
            await health_server.start()
            self._health_server = health_server
        for name in ("", *SERVICES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.ingest.start()
        self._spawn(self.storage.run(self._stop), "storage")
        self._spawn(maintenance.run(self.storage, s, self._stop), "maintenance")
        self._spawn(self.config.follow(self._stop), "config")
        if self.bus is not None:
            self._spawn(route_commands(self.hub, self.bus, self._stop), "commands")
        if self.http is not None:
            self._spawn(self.http.run(self._stop), "http-ingest")
        try:
            self.metrics = serve_metrics(s.metrics_listen, ComponentMetrics(["aggregator"]))
        except OSError as e:
            raise ConfigurationError(str(e)) from e
        log.info("aggregator listening on %s (TLS %s, auth %s)%s", self.address,
                 "on" if s.tls_cert else "off", _auth_summary(self.authenticator),
                 f"; remote write and OTLP/HTTP on {self.http.url}" if self.http else "")

    @property
    def address(self) -> str:
        host = self.settings.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    def _spawn(self, coro, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("aggregator task %s failed", task.get_name(), exc_info=task.exception())

    async def stop(self, grace: float = 5.0) -> None:
        if self._server is None:
            return
        await self.health.enter_graceful_shutdown()
        self._stop.set()
        await self._server.stop(grace)
        http = next((t for t in self._tasks if t.get_name() == "http-ingest"), None)
        if http is not None:
            # Before the writers stop: requests in flight are answered once their batches commit.
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(http), timeout=15)
        if self._health_server is not None:
            await self._health_server.stop(None)
            self._health_server = None
        await self.ingest.stop()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.storage.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.bus is not None:
            with contextlib.suppress(Exception):
                await self.bus.close()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()
        self._server = None

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()
