"""The MonitoredFleet spec as the operator reads it: defaults filled in, bounds checked.

The CRD's openAPIV3Schema (crds/monitoredfleet.yaml) refuses most bad specs at `kubectl apply`;
this model is the second line for what a schema does not cover and for objects written before a
schema change, so a bad spec turns into a Degraded condition naming the field, never a crash.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from sysmon.core.durations import Duration, within
from sysmon.core.metrics import ATTR_KEY_RE, METRIC_GROUPS
from sysmon.core.spec_base import CollectionInterval, MetricGroups, Spec

# Kubernetes quantities ("100m", "1.5Gi", "2"); the API server normalises them, compare.py knows.
QUANTITY_RE = r"^[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+|[numkMGTPE]|[KMGTPE]i)?$"
DNS_SUBDOMAIN_RE = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
# Exactly DNS-1123 (label by label), for names that must also be host names.
DNS_1123_SUBDOMAIN_RE = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY_RE = r"^[-._a-zA-Z0-9]+$"
# http(s) without credentials: the same rule as AlertRule action URLs (crds/alertrule.yaml).
HTTP_URL_RE = r"^https?://[^/@ ]+(/[^ ]*)?$"

Quantity = str | int


class Resources(Spec):
    requests: dict[Literal["cpu", "memory", "ephemeral-storage"], Quantity] = Field(default_factory=dict)
    limits: dict[Literal["cpu", "memory", "ephemeral-storage"], Quantity] = Field(default_factory=dict)

    @field_validator("requests", "limits")
    @classmethod
    def _quantities(cls, v: dict[str, Quantity]) -> dict[str, Quantity]:
        for name, q in v.items():
            if isinstance(q, str) and not re.match(QUANTITY_RE, q):
                raise ValueError(f"{name}: {q!r} is not a Kubernetes quantity (e.g. 100m, 256Mi)")
            if isinstance(q, int) and q < 0:
                raise ValueError(f"{name}: must not be negative")
        return v

    def as_k8s(self) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        if self.requests:
            out["requests"] = {k: str(v) for k, v in sorted(self.requests.items())}
        if self.limits:
            out["limits"] = {k: str(v) for k, v in sorted(self.limits.items())}
        return out


def _default_resources(requests: dict[str, str], limits: dict[str, str]) -> Any:
    """A component's resources field, defaulting to these requests and limits."""
    return Field(default_factory=lambda: Resources.model_validate({"requests": requests, "limits": limits}))


# An image override (the fleet's own image when unset), and a Deployment's replica count.
Image = Annotated[str | None, Field(min_length=1, max_length=512)]
Replicas = Annotated[int, Field(ge=1, le=20)]


class Toleration(Spec):
    key: str | None = Field(None, max_length=253)
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = Field(None, max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(None, alias="tolerationSeconds", ge=0)

    def as_k8s(self) -> dict[str, object]:
        return self.model_dump(by_alias=True, exclude_none=True)


class SecretKeyRef(Spec):
    name: str = Field(..., max_length=253, pattern=DNS_SUBDOMAIN_RE)
    key: str = Field(..., max_length=253, pattern=SECRET_KEY_RE)


class SecretSource(Spec):
    secret_key_ref: SecretKeyRef = Field(..., alias="secretKeyRef")


class Collectors(Spec):
    image: Image = None
    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector")
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    resources: Resources = _default_resources({"cpu": "20m", "memory": "64Mi"}, {"memory": "192Mi"})


class Aggregator(Spec):
    image: Image = None
    replicas: Replicas = 1
    resources: Resources = _default_resources({"cpu": "100m", "memory": "256Mi"}, {"memory": "1Gi"})


class Gateway(Spec):
    enabled: bool = True
    # Where people open the dashboard (behind an Ingress, say): the alerts service links to it.
    external_url: str | None = Field(None, alias="externalURL", max_length=2048, pattern=HTTP_URL_RE)
    image: Image = None
    replicas: Replicas = 1
    resources: Resources = _default_resources({"cpu": "50m", "memory": "128Mi"}, {"memory": "512Mi"})


class Alerts(Spec):
    enabled: bool = True
    image: Image = None
    # Replicas share the hosts: on Kafka by the consumer group's partitions, on Redis by leases on
    # the samples shards. One replica on Redis is one pod (it resumes its consumer by name), replaced,
    # never doubled.
    replicas: Replicas = 1
    resources: Resources = _default_resources({"cpu": "50m", "memory": "128Mi"}, {"memory": "512Mi"})


# An SQS queue URL: https://sqs.REGION.amazonaws.com/ACCOUNT/NAME on AWS; on another SQS API
# (endpointUrl: LocalStack, ElasticMQ, moto) any http(s) host, the same /ACCOUNT/NAME path.
SQS_QUEUE_URL_RE = r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?/[0-9]{12}/[A-Za-z0-9_-]{1,80}([.]fifo)?$"
# Without endpointUrl the queue is AWS's (the exporter calls AWS's endpoint for the region).
AWS_QUEUE_URL_RE = r"^https://[^/]+[.]amazonaws[.]com([.]cn)?/"
# The URLs from which the exporter reads the region itself (SqsExporterSettings.region_name).
REGIONAL_QUEUE_URL_RE = r"^https?://sqs[.][^./]+[.]amazonaws[.]"
AWS_REGION_RE = r"^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$"
IAM_ROLE_ARN_RE = r"^arn:aws(-[a-z]+)*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}$"
CONSUMER_GROUP_RE = r"^[A-Za-z0-9._:-]{1,64}$"
# The exporter's own limits (sysmon.pipeline.pack.MIN_MESSAGE_BYTES, wire.MAX_MESSAGE_BYTES: SQS's),
# repeated because the operator does not import the pipeline; a test keeps them equal.
SQS_MIN_MESSAGE_BYTES = 16 * 1024
SQS_MAX_MESSAGE_BYTES = 256 * 1024


class AwsCredentialsSecret(Spec):
    """A Secret in the fleet's namespace holding an access key: its values reach the exporter as
    AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY by secretKeyRef, never in a manifest."""

    name: str = Field(..., max_length=253, pattern=DNS_SUBDOMAIN_RE)
    access_key_id_key: str = Field("AWS_ACCESS_KEY_ID", alias="accessKeyIdKey", max_length=253,
                                   pattern=SECRET_KEY_RE)
    secret_access_key_key: str = Field("AWS_SECRET_ACCESS_KEY", alias="secretAccessKeyKey", max_length=253,
                                       pattern=SECRET_KEY_RE)


class SqsExporter(Spec):
    """`sysmon export sqs` for the fleet: its samples to an SQS queue (the Lambda pipeline).

    Credentials: serviceAccountRoleArn (IRSA: the exporter's own ServiceAccount carries the role, and
    EKS injects a web identity token), or credentialsSecret (an access key), or neither (whatever
    the AWS SDK finds: EKS Pod Identity, the node's role).
    """

    queue_url: str = Field(..., alias="queueUrl", max_length=2048, pattern=SQS_QUEUE_URL_RE)
    region: str | None = Field(None, max_length=32, pattern=AWS_REGION_RE)
    endpoint_url: str | None = Field(None, alias="endpointUrl", max_length=2048, pattern=HTTP_URL_RE)
    service_account_role_arn: str | None = Field(None, alias="serviceAccountRoleArn", max_length=2048,
                                                 pattern=IAM_ROLE_ARN_RE)
    credentials_secret: AwsCredentialsSecret | None = Field(None, alias="credentialsSecret")
    consumer_group: str = Field("sqs-exporter", alias="consumerGroup", pattern=CONSUMER_GROUP_RE)
    message_bytes: int = Field(64 * 1024, alias="messageBytes", ge=SQS_MIN_MESSAGE_BYTES, le=SQS_MAX_MESSAGE_BYTES,
                               strict=True)
    linger: Annotated[Duration, within(timedelta(0), timedelta(seconds=60))] = timedelta(milliseconds=500)
    retry_max: Annotated[Duration, within(timedelta(seconds=1), timedelta(hours=1))] = Field(
        timedelta(seconds=30), alias="retryMax")
    image: Image = None
    resources: Resources = _default_resources({"cpu": "50m", "memory": "128Mi"}, {"memory": "512Mi"})

    @model_validator(mode="after")
    def _queue_region_credentials(self) -> SqsExporter:
        if self.endpoint_url is None and not re.match(AWS_QUEUE_URL_RE, self.queue_url):
            raise ValueError("without endpointUrl, queueUrl must be an AWS queue URL "
                             "(https://sqs.REGION.amazonaws.com/ACCOUNT/NAME)")
        if self.region is None and not re.match(REGIONAL_QUEUE_URL_RE, self.queue_url):
            raise ValueError("region is needed when the queue URL does not name one (sqs.REGION.amazonaws.com)")
        if self.service_account_role_arn and self.credentials_secret:
            raise ValueError("serviceAccountRoleArn or credentialsSecret, not both")
        return self


class Exporters(Spec):
    sqs: SqsExporter | None = None


# host:port of a Kafka broker (a bootstrap server).
BROKER_RE = r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?):[0-9]{1,5}$"


class KafkaTls(Spec):
    """TLS to the brokers: the CA that signed them (e.g. Strimzi's <cluster>-cluster-ca-cert), and
    a client certificate for mutual TLS (a kubernetes.io/tls Secret, or a Strimzi KafkaUser's)."""

    ca_secret_ref: SecretKeyRef | None = Field(None, alias="caSecretRef")
    client_secret_name: str | None = Field(None, alias="clientSecretName", max_length=253,
                                           pattern=DNS_1123_SUBDOMAIN_RE)
    client_cert_key: str = Field("tls.crt", alias="clientCertKey", max_length=253, pattern=SECRET_KEY_RE)
    client_key_key: str = Field("tls.key", alias="clientKeyKey", max_length=253, pattern=SECRET_KEY_RE)


class KafkaSasl(Spec):
    mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    username: str = Field(..., min_length=1, max_length=253)
    password: SecretSource


class Kafka(Spec):
    bootstrap_servers: list[Annotated[str, Field(max_length=260, pattern=BROKER_RE)]] = Field(
        ..., alias="bootstrapServers", min_length=1, max_length=16)
    partitions: int = Field(12, ge=1, le=10_000)
    replication: int = Field(3, ge=1, le=16)
    topic_prefix: str = Field("sysmon.", alias="topicPrefix", max_length=200, pattern=r"^[A-Za-z0-9._-]*$")
    retention: Duration = timedelta(minutes=15)
    tls: KafkaTls | None = None
    sasl: KafkaSasl | None = None

    @field_validator("retention")
    @classmethod
    def _retention(cls, v: timedelta) -> timedelta:
        if v < timedelta(minutes=1):
            raise ValueError("must be at least 1m")
        return v


class Bus(Spec):
    """Which bus carries samples, host and alert events: the fleet's Redis (the default) or Kafka."""

    type: Literal["redis", "kafka"] = "redis"
    kafka: Kafka | None = None

    @model_validator(mode="after")
    def _kafka_with_servers(self) -> Bus:
        if self.type == "kafka" and self.kafka is None:
            raise ValueError("bus.type kafka needs bus.kafka.bootstrapServers")
        return self


class Tls(Spec):
    """TLS on the aggregator's gRPC port, from a kubernetes.io/tls Secret (tls.crt, tls.key, ca.crt)."""

    secret_name: str = Field(..., alias="secretName", max_length=253, pattern=DNS_1123_SUBDOMAIN_RE)
    # Default: the name clients dial, the aggregator Service's <fleet>-aggregator.<namespace>.svc.
    server_name: str | None = Field(None, alias="serverName", max_length=253, pattern=DNS_1123_SUBDOMAIN_RE)
    mutual: bool = False


# The Kubernetes API server's own audience (its default service-account issuer): a token minted for
# it opens the API, so a sysmon audience must never be it (nor accept tokens that are).
API_SERVER_AUDIENCE = "https://kubernetes.default.svc"


class Identity(Spec):
    """How collectors and the alerts service prove who they are to the aggregator.

    serviceAccountToken (the default): each pod presents a projected ServiceAccount token minted
    for `audience`, which the kubelet rotates and the aggregator verifies with TokenReview; a
    collector's token speaks only for its own node, and the fleet token never reaches the nodes.
    fleetToken: every component presents the fleet-wide token from spec.token, as before.
    """

    mode: Literal["serviceAccountToken", "fleetToken"] = "serviceAccountToken"
    audience: str = Field("sysmon.dev", min_length=1, max_length=253, pattern=r"^\S+$")
    # At least 10 minutes (the API server's floor for projected tokens); at most a day, so that a
    # token copied off a node soon stops working. The kubelet renews it at 80 % of its lifetime.
    # Strict: "3600" is not a number to the API server either.
    token_expiration_seconds: int = Field(3600, alias="tokenExpirationSeconds", ge=600, le=86400, strict=True)

    @field_validator("audience")
    @classmethod
    def _not_the_api_servers(cls, v: str) -> str:
        if v.startswith(API_SERVER_AUDIENCE):
            raise ValueError("the audience must not be the Kubernetes API server's")
        return v

    @property
    def service_account_tokens(self) -> bool:
        return self.mode == "serviceAccountToken"


class Retention(Spec):
    raw: Duration = timedelta(hours=24)
    one_minute: Duration = Field(timedelta(days=7), alias="oneMinute")
    one_hour: Duration = Field(timedelta(days=90), alias="oneHour")

    @field_validator("raw", "one_minute", "one_hour")
    @classmethod
    def _positive(cls, v: timedelta) -> timedelta:
        if v < timedelta(minutes=10):
            raise ValueError("must be at least 10m")
        return v


class FleetSpec(Spec):
    image: Image = None
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field("IfNotPresent", alias="imagePullPolicy")
    interval: CollectionInterval = timedelta(seconds=5)
    metric_groups: MetricGroups = Field(default_factory=lambda: list(METRIC_GROUPS), alias="metricGroups")
    host_labels: dict[str, str] = Field(default_factory=dict, alias="hostLabels", max_length=16)
    retention: Retention = Field(default_factory=Retention)
    postgres: SecretSource
    redis: SecretSource
    # The fleet-wide token: the aggregator and gateway accept it (people, scripts, the dashboard);
    # collectors and the alerts service present it only in identity mode fleetToken.
    token: SecretSource
    # Tilt's live update writes the synced code into running containers; everywhere else the
    # root filesystem stays read-only.
    read_only_root_filesystem: bool = Field(True, alias="readOnlyRootFilesystem")
    collectors: Collectors = Field(default_factory=Collectors)
    aggregator: Aggregator = Field(default_factory=Aggregator)
    gateway: Gateway = Field(default_factory=Gateway)
    alerts: Alerts = Field(default_factory=Alerts)
    tls: Tls | None = None
    identity: Identity = Field(default_factory=Identity)
    bus: Bus = Field(default_factory=Bus)
    exporters: Exporters = Field(default_factory=Exporters)

    @model_validator(mode="after")
    def _sqs_exporter_needs_one_redis_stream(self) -> FleetSpec:
        # The exporter resumes from a Redis consumer group on the one samples stream
        # (SqsExporterSettings refuses SYSMON_BUS_URL and shards): on a Kafka fleet, or one whose
        # samples are split into shards for alerts replicas, it would forward nothing.
        if self.exporters.sqs is not None and self.bus.type == "kafka":
            raise ValueError("exporters.sqs reads the Redis bus only: it cannot forward from bus.type kafka")
        if self.exporters.sqs is not None and self.alerts.replicas > 1:
            raise ValueError("exporters.sqs reads the one Redis samples stream: with alerts.replicas above 1 "
                             "the samples are split into shards, which it does not follow yet")
        return self

    @field_validator("host_labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        for k, val in v.items():
            if not ATTR_KEY_RE.match(k) or len(k) > 64:
                raise ValueError(f"label {k!r} must match [A-Za-z_][A-Za-z0-9_.]* (at most 64 characters)")
            if len(val) > 256:
                raise ValueError(f"label {k!r}: value longer than 256 characters")
        return v
