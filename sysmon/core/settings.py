"""Settings for every command: one field per flag, each also read from a SYSMON_* variable.

Settings are plain objects passed into the components that need them; nothing reads the
environment at import time.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from sysmon.core.durations import Duration
from sysmon.core.metrics import METRIC_GROUPS, Limits
from sysmon.core.spec_base import CollectionInterval, MetricGroups


def _parse_labels(v: Any) -> Any:
    """Accept a mapping, JSON, or the shell-friendly form "env=prod,zone=a"."""
    if isinstance(v, str):
        s = v.strip()
        if not s:
            return {}
        if s.startswith("{"):
            return json.loads(s)
        out: dict[str, str] = {}
        for part in s.split(","):
            key, sep, value = part.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"label {part!r} is not key=value")
            out[key.strip()] = value.strip()
        return out
    return v


# NoDecode: pydantic-settings would otherwise insist on JSON in the environment variable.
Labels = Annotated[dict[str, str], NoDecode, BeforeValidator(_parse_labels)]


def _parse_list(v: Any) -> Any:
    """Accept a list, JSON, or the shell-friendly form "a,b,c"."""
    if isinstance(v, str):
        s = v.strip()
        if s.startswith("["):
            return json.loads(s)
        return [part.strip() for part in s.split(",") if part.strip()]
    return v


CommaList = Annotated[list[str], NoDecode, BeforeValidator(_parse_list)]


class _Base(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SYSMON_", extra="ignore", populate_by_name=True)


def _parse_durations(v: Any) -> Any:
    """topic=duration pairs: "samples=1h,alerts=7d" or JSON."""
    return _parse_labels(v)


TopicDurations = Annotated[dict[str, Duration], NoDecode, BeforeValidator(_parse_durations)]
BUS_TOPICS = ("samples", "hosts", "commands", "config", "alerts")  # sysmon.core.bus.TOPICS


class BusSettings(_Base):
    """Which bus carries events between the services (see sysmon.core.bus)."""

    bus_url: str | None = Field(
        None, description="kafka://host:port[,host:port...] for the Kafka bus; unset: the Redis bus on "
                          "SYSMON_REDIS_URL"
    )
    bus_partitions: int = Field(12, ge=1, le=10_000, description="partitions of each Kafka topic it creates "
                                                                  "(at most this many alerts replicas share hosts)")
    bus_replication: int = Field(1, ge=1, le=16, description="replication factor of each Kafka topic it creates")
    bus_topic_prefix: str = Field("sysmon.", pattern=r"^[A-Za-z0-9._-]{0,200}$",
                                  description="Kafka topic names are this prefix and the bus topic")
    bus_retention: Duration = Field(
        timedelta(minutes=15), description="how long a topic keeps events (a durable consumer may be away this long)"
    )
    bus_topic_retention: TopicDurations = Field(
        default_factory=dict, description="retention per topic, over bus_retention: samples=15m,alerts=1d"
    )
    bus_session_timeout: Duration = Field(
        timedelta(seconds=10), description="a consumer-group member silent this long leaves its group and its "
                                           "partitions (hosts) move to the others (on Redis: the shard lease time)"
    )
    bus_redis_shards: int = Field(
        1, ge=1, le=1024, description="on the Redis bus, samples are split by host over this many streams, whose "
                                      "leases alerts replicas share (1: one stream, one alerts replica); the same "
                                      "on every component"
    )
    bus_retention_bytes: int = Field(-1, ge=-1, description="Kafka retention.bytes per partition; -1: by time only")
    bus_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] | None = Field(
        None, description="Kafka security protocol (default: SSL with TLS options, SASL_SSL with SASL and TLS, "
                          "SASL_PLAINTEXT with SASL alone)"
    )
    bus_tls: bool = Field(False, description="TLS to the Kafka brokers with the system's roots (implied by bus_tls_ca)")
    bus_tls_ca: Path | None = Field(None, description="PEM CA that signed the Kafka brokers' certificates")
    bus_tls_cert: Path | None = Field(None, description="PEM client certificate for the Kafka brokers (mTLS)")
    bus_tls_key: Path | None = Field(None, description="PEM private key for bus_tls_cert")
    bus_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism for the Kafka brokers"
    )
    bus_sasl_username: str | None = Field(None, description="SASL user name")
    bus_sasl_password: SecretStr | None = Field(None, description="SASL password")

    @field_validator("bus_url")
    @classmethod
    def _bus_url(cls, v: str | None) -> str | None:
        if v and not v.startswith("kafka://"):
            raise ValueError("the bus URL is kafka://host:port[,host:port...] (unset for the Redis bus)")
        if v:
            from sysmon.core.bus.kafka import parse_kafka_url

            parse_kafka_url(v)
        return v or None

    @field_validator("bus_topic_retention")
    @classmethod
    def _topics(cls, v: dict[str, timedelta]) -> dict[str, timedelta]:
        for topic, d in v.items():
            if topic not in BUS_TOPICS:
                raise ValueError(f"{topic!r} is not a bus topic ({', '.join(BUS_TOPICS)})")
            if d <= timedelta(0):
                raise ValueError(f"retention of {topic} must be more than 0")
        return v

    @field_validator("bus_session_timeout")
    @classmethod
    def _session(cls, v: timedelta) -> timedelta:
        if not timedelta(milliseconds=500) <= v <= timedelta(minutes=30):
            raise ValueError("must be between 500ms and 30m")
        return v

    @model_validator(mode="after")
    def _bus_credentials(self) -> BusSettings:
        if self.bus_sasl_mechanism and not (self.bus_sasl_username and self.bus_sasl_password):
            raise ValueError("bus_sasl_mechanism needs bus_sasl_username and bus_sasl_password")
        if (self.bus_tls_cert is None) != (self.bus_tls_key is None):
            raise ValueError("bus_tls_cert and bus_tls_key are given together")
        return self

    def bus_security(self) -> Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]:
        if self.bus_security_protocol:
            return self.bus_security_protocol
        tls = bool(self.bus_tls or self.bus_tls_ca or self.bus_tls_cert)
        if self.bus_sasl_mechanism:
            return "SASL_SSL" if tls else "SASL_PLAINTEXT"
        return "SSL" if tls else "PLAINTEXT"


class ConnectionSettings(BusSettings):
    postgres_url: str | None = Field(None, description="PostgreSQL DSN; embedded server when unset (sysmon up)")
    redis_url: str | None = Field(None, description="Redis URL; embedded server when unset (sysmon up)")
    token: SecretStr | None = Field(
        None, description="Bearer token for gRPC (and HTTP); required unless bound to loopback"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class IdentitySettings(_Base):
    """Credentials beyond the fleet-wide token (see sysmon.core.identity), for the aggregator and gateway."""

    token_secret: SecretStr | None = Field(
        None, description="secret (at least 32 bytes) that signs per-host and scoped tokens (sysmon token issue); "
                          "they are accepted beside the fleet-wide token"
    )
    token_secret_previous: SecretStr | None = Field(
        None, description="the secret before the last rotation: tokens it signed are still accepted"
    )
    kube_audience: str | None = Field(
        None, description="accept Kubernetes ServiceAccount tokens for this audience, verified with TokenReview"
    )
    kube_collectors: CommaList = Field(
        default_factory=list, description="ServiceAccounts (namespace/name) of collectors; each may send only "
                                          "for the node its pod runs on"
    )
    kube_readers: CommaList = Field(
        default_factory=list, description="ServiceAccounts (namespace/name) with read access"
    )
    kube_admins: CommaList = Field(
        default_factory=list, description="ServiceAccounts (namespace/name) that may apply configuration"
    )

    def secrets(self) -> list[str]:
        return [s.get_secret_value() for s in (self.token_secret, self.token_secret_previous)
                if s is not None and s.get_secret_value()]

    @property
    def auth_configured(self) -> bool:
        token = getattr(self, "token", None)
        return bool((token is not None and token.get_secret_value()) or self.secrets() or self.kube_audience)


class StorageSettings(_Base):
    storage_mode: Literal["auto", "plain", "timescale"] = Field(
        "auto", description="timescale when the extension exists (auto), or force one path"
    )
    raw_retention: Duration = Field(timedelta(hours=24), description="keep raw samples this long")
    rollup_1m_retention: Duration = Field(timedelta(days=7), description="keep 1-minute rollups this long")
    rollup_1h_retention: Duration = Field(timedelta(days=90), description="keep 1-hour rollups this long")
    hot_window: Duration = Field(timedelta(minutes=5), description="span of the Redis hot tier per host")


class AggregatorSettings(ConnectionSettings, StorageSettings, IdentitySettings):
    listen: str = Field("127.0.0.1:50051", description="gRPC listen address host:port")
    tls_cert: Path | None = Field(None, description="PEM certificate chain; enables TLS with tls_key")
    tls_key: Path | None = Field(None, description="PEM private key for tls_cert")
    tls_client_ca: Path | None = Field(None, description="require client certificates signed by this CA")
    health_listen: str = Field(
        "", description="host:port of a plaintext listener serving only grpc.health.v1, for probes that "
                        "cannot speak TLS (the kubelet's); empty: off"
    )
    metrics_listen: str = Field(
        "127.0.0.1:9464", description="host:port of the Prometheus /metrics endpoint; empty to disable"
    )
    http_listen: str = Field(
        "", description="host:port of the HTTP ingest listener: Prometheus remote write (POST /api/v1/write) "
                        "and OTLP/HTTP (POST /v1/metrics); TLS as the gRPC listener; empty: off"
    )
    aggregator_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=64 * 1024, le=64 * 1024 * 1024)
    max_attributes: int = Field(16, ge=1, le=128)
    max_series_per_stream: int = Field(20_000, ge=1, description="series one Push stream may declare")
    max_series_per_host: int = Field(
        20_000, ge=1, description="series one host may have on this aggregator, over all its streams"
    )
    max_samples_per_second_per_host: int = Field(
        10_000, ge=1, description="each host's sustained sample budget; over it, batches are sent back with "
                                  "RESOURCE_EXHAUSTED and a time to retry"
    )
    max_sample_burst_per_host: int = Field(
        200_000, ge=1, description="samples a host may send at once above its rate (a replay after an outage)"
    )
    client_cert_hosts: bool = Field(
        False, description="a verified client certificate (mutual TLS) may send for the host ids in its DNS "
                           "subject alternative names"
    )
    max_future: Duration = Field(timedelta(minutes=5), description="accept samples this far ahead")
    writer_queue_samples: int = Field(
        1_000_000, ge=1000, description="samples waiting for PostgreSQL before Push streams are slowed"
    )
    writers: int = Field(2, ge=1, le=32, description="parallel PostgreSQL writer connections")
    commit_max_samples: int = Field(50_000, ge=100, description="samples per group commit at most")
    commit_linger: Duration = Field(
        timedelta(milliseconds=50),
        description="how long a commit waits for more batches to join it (0: commit at once); a few ms "
                    "of delay to PostgreSQL buy far fewer commits when many collectors send small batches",
    )
    live_linger: Duration = Field(
        timedelta(milliseconds=20),
        description="how long batches wait for others to go to the hot tier and the bus together (0: at once)",
    )
    rollup_interval: Duration = Field(timedelta(seconds=15), description="how often rollups catch up")
    retention_interval: Duration = Field(timedelta(minutes=5), description="how often partitions are kept")
    insecure_no_auth: bool = Field(
        False, description="allow a non-loopback listener without a token (never in production)"
    )

    def limits(self) -> Limits:
        return Limits(
            max_message_bytes=self.max_message_bytes,
            max_attributes=self.max_attributes,
            max_series_per_stream=self.max_series_per_stream,
            max_series_per_host=self.max_series_per_host,
            max_samples_per_second_per_host=self.max_samples_per_second_per_host,
            max_sample_burst_per_host=self.max_sample_burst_per_host,
            max_past=self.raw_retention,
            max_future=self.max_future,
        )

    @field_validator("tls_key")
    @classmethod
    def _key_with_cert(cls, v: Path | None, info: Any) -> Path | None:
        if (v is None) != (info.data.get("tls_cert") is None):
            raise ValueError("tls_cert and tls_key are given together")
        return v


def default_host_id() -> str:
    # On Kubernetes the DaemonSet passes the node name through the downward API.
    return os.environ.get("NODE_NAME") or socket.gethostname()


class AggregatorClientSettings(_Base):
    """How a component reaches the aggregator's gRPC services (see sysmon.core.client)."""

    aggregator: str = Field("127.0.0.1:50051", description="aggregator address host:port")
    token: SecretStr | None = Field(None, description="bearer token sent to the aggregator")
    token_file: Path | None = Field(
        None, description="read the bearer token from this file at every connection (a projected ServiceAccount "
                          "token, which the kubelet rotates); instead of token"
    )
    tls_ca: Path | None = Field(None, description="PEM CA that signed the aggregator's certificate")
    tls: bool = Field(False, description="use TLS with the system's roots (implied by tls_ca)")
    tls_server_name: str | None = Field(None, description="override the name checked in the certificate")
    tls_client_cert: Path | None = Field(None, description="PEM client certificate for mutual TLS")
    tls_client_key: Path | None = Field(None, description="PEM private key for tls_client_cert")

    @field_validator("tls_client_key")
    @classmethod
    def _client_key_with_cert(cls, v: Path | None, info: Any) -> Path | None:
        if (v is None) != (info.data.get("tls_client_cert") is None):
            raise ValueError("tls_client_cert and tls_client_key are given together")
        return v

    @property
    def uses_tls(self) -> bool:
        # A client certificate only means something over TLS, so it implies it.
        return bool(self.tls or self.tls_ca or self.tls_client_cert)


class OperatorSettings(AggregatorClientSettings):
    """The Kubernetes operator: which namespace it serves, how it peers, how it reaches the aggregator.

    `aggregator`/`token`/TLS (inherited) say where AlertRules are pushed through ConfigService.Apply.
    """

    namespace: str | None = Field(
        None, description="namespace to serve (default: POD_NAMESPACE, the operator's own)"
    )
    peering: str = Field("sysmon-operator", description="KopfPeering object for leader election")
    standalone: bool = Field(False, description="run without peering (one replica only, e.g. in tests)")
    priority: int = Field(0, description="peering priority: the highest-priority live operator is active")
    health_listen: str = Field(
        "127.0.0.1:8081", description="host:port of the liveness endpoint (/healthz); empty to disable"
    )
    resync: Duration = Field(
        timedelta(seconds=20), description="how often each fleet's children are compared and drift corrected"
    )
    image: str = Field("sysmon:latest", description="image for fleet components whose spec names none")
    push_timeout: Duration = Field(timedelta(seconds=10), description="deadline of one ConfigService.Apply call")
    max_backoff: Duration = Field(timedelta(minutes=2), description="longest wait between retries of a push")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    def served_namespace(self) -> str:
        ns = self.namespace or os.environ.get("POD_NAMESPACE")
        if not ns:
            raise ValueError("set SYSMON_NAMESPACE (or POD_NAMESPACE) to the namespace the operator serves")
        return ns


class AgentSettings(AggregatorClientSettings):
    host_id: str = Field(default_factory=default_host_id, description="this machine's id")
    labels: Labels = Field(default_factory=dict, description="host labels: env=prod,zone=a or JSON")
    interval: CollectionInterval = Field(timedelta(seconds=5), description="collection interval")
    metric_groups: MetricGroups = Field(default_factory=lambda: list(METRIC_GROUPS), description="what to sample")
    buffer_batches: int = Field(
        2880, ge=1, description="unacknowledged batches kept for replay (oldest dropped past it)"
    )
    ack_timeout: Duration = Field(timedelta(seconds=30), description="resend a batch unacknowledged this long")
    max_backoff: Duration = Field(timedelta(seconds=30), description="longest wait between reconnects")
    host_root: str | None = Field(None, description="where the host's / is mounted (in a container)")
    metrics_listen: str = Field("", description="host:port for the collector's own /metrics; empty: off")


class GatewaySettings(ConnectionSettings, StorageSettings, IdentitySettings):
    listen: str = Field("127.0.0.1:8080", description="HTTP listen address host:port (REST, WebSocket, dashboard)")
    insecure_no_auth: bool = Field(
        False, description="serve without a token (never in production; sysmon up does it on loopback only)"
    )
    stale_after: Duration = Field(
        timedelta(seconds=30), description="a host is stale when silent this long (at least 3 intervals)"
    )
    down_after: Duration = Field(timedelta(minutes=2), description="a host is down when silent this long")
    max_points_per_series: int = Field(11_000, ge=10, le=1_000_000, description="points per series per query")
    max_series: int = Field(1_000, ge=1, le=100_000, description="series per query")
    ws_queue_frames: int = Field(256, ge=4, le=100_000, description="frames queued per WebSocket client")
    ws_heartbeat: Duration = Field(timedelta(seconds=15), description="heartbeat interval on /ws/live")
    ws_send_timeout: Duration = Field(timedelta(seconds=30), description="close a client that takes longer")
    ws_max_clients: int = Field(5_000, ge=1, description="WebSocket clients at most")
    static_dir: Path | None = Field(None, description="dashboard assets (default: the built ones in the package)")


class AlertsSettings(ConnectionSettings, AggregatorClientSettings):
    """The alerts service: rules from the aggregator's ConfigService.Watch, samples from the bus."""

    listen: str = Field("127.0.0.1:9465", description="host:port of /healthz, /readyz and /metrics; empty: off")
    consumer_group: str = Field("alerts", description="bus consumer group (one per alerts deployment)")
    consumer: str = Field(
        "alerts-0", description="consumer name in the group; keep it across restarts to resume where it stopped"
    )
    external_url: str = Field("http://127.0.0.1:8080", description="the dashboard's URL, for links in notifications")
    no_data_after: Duration = Field(
        timedelta(minutes=2), description="a host silent this long raises its no-data alert; 0s: never"
    )
    no_data_severity: Literal["critical", "warning", "info"] = "warning"
    forget_after: Duration = Field(
        timedelta(hours=24), description="a host silent this long is forgotten and its alerts resolve; 0s: never"
    )
    max_sample_age: Duration = Field(
        timedelta(minutes=10), description="older samples (a collector's replay) fill windows but never alert"
    )
    tick: Duration = Field(timedelta(seconds=1), description="how often `for`, repeats and no-data are checked")
    retry_initial: Duration = Field(timedelta(seconds=1), description="first wait after a failed notification")
    retry_max: Duration = Field(timedelta(minutes=5), description="longest wait between notification attempts")
    give_up_after: Duration = Field(timedelta(hours=24), description="drop a notification still failing this long")
    alertmanager_resend: Duration = Field(
        timedelta(minutes=1), description="how often firing alerts are sent again to Alertmanager (as Prometheus)"
    )
    history_retention: Duration = Field(timedelta(days=90), description="keep alert history this long")

    @field_validator("tick")
    @classmethod
    def _tick(cls, v: timedelta) -> timedelta:
        if not timedelta(milliseconds=50) <= v <= timedelta(minutes=1):
            raise ValueError("must be between 50ms and 1m")
        return v

    @field_validator("retry_initial", "retry_max", "alertmanager_resend")
    @classmethod
    def _positive(cls, v: timedelta) -> timedelta:
        if v <= timedelta(0):
            raise ValueError("must be more than 0")
        return v


def is_loopback(listen: str) -> bool:
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
