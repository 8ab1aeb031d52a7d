"""MonitoredFleet -> the Kubernetes objects that run it. Pure: same fleet in, same objects out.

Each component gets a ConfigMap of SYSMON_* variables (envFrom) whose hash is stamped on its pod
template, so a change restarts exactly the pods that read it, and nothing else. Secrets are
referenced (secretKeyRef, or a Secret volume for TLS), never copied. Every object carries a
controller owner reference to the fleet, so deleting the fleet deletes them (garbage collection),
and a spec-hash annotation, so the reconciler can tell a stale object from a current one without
guessing at server defaults.

Identity (spec.identity): the collector, the aggregator and the alerts service each run as a
ServiceAccount of their own. In serviceAccountToken mode the collector and the alerts service
present a projected token of it (audience-bound, rotated by the kubelet, read through
SYSMON_TOKEN_FILE) instead of the fleet token, and the aggregator, the one pod here with a
Kubernetes API token, verifies them with TokenReview: collectors for their own node, the alerts
service as reader, the operator's ServiceAccount as admin.

The SQS exporter (spec.exporters.sqs) is a Deployment of `sysmon export sqs` with a ServiceAccount
of its own that the Kubernetes API grants nothing: it is there for IRSA (its role-arn annotation)
and so that no other pod shares the AWS identity. It reads only the Redis URL Secret.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sysmon.core.durations import format_duration
from sysmon.operator.fleet_spec import FleetSpec, Identity, Kafka, Resources, SecretSource, SqsExporter, Tls

GROUP = "sysmon.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
FLEET_KIND = "MonitoredFleet"
MANAGER = "sysmon-operator"

AGGREGATOR_GRPC_PORT = 50051
AGGREGATOR_METRICS_PORT = 9464
# Plaintext, grpc.health.v1 only: where the kubelet's gRPC probe (which has no TLS) asks when TLS is on.
AGGREGATOR_HEALTH_PORT = 50052
# Prometheus remote write (/api/v1/write) and OTLP/HTTP (/v1/metrics); TLS and tokens as the gRPC port.
AGGREGATOR_INGEST_PORT = 9201
GATEWAY_PORT = 8080
# The alerts service's HTTP port (/healthz, /readyz, /metrics).
ALERTS_PORT = 8081
# Collectors share the node's network, so their /metrics port is taken on every node.
COLLECTOR_METRICS_PORT = 9465
# The SQS exporter's /metrics (its only HTTP endpoint: the probes ask it too).
SQS_EXPORTER_METRICS_PORT = 9466
SQS_EXPORTER = "sqs-exporter"
# IRSA: EKS's webhook gives pods of a ServiceAccount so annotated a web identity token for the role.
IRSA_ROLE_ANNOTATION = "eks.amazonaws.com/role-arn"
HOST_ROOT = "/host"
# Where the fleet's TLS Secret is mounted; its keys are those of a kubernetes.io/tls Secret.
TLS_DIR = "/etc/sysmon/tls"
TLS_VOLUME = "tls"
TLS_CERT, TLS_KEY, TLS_CA = "tls.crt", "tls.key", "ca.crt"
# Where the Kafka bus's CA and client certificate are mounted (spec.bus.kafka.tls).
KAFKA_TLS_DIR = "/etc/sysmon/kafka-tls"
KAFKA_TLS_VOLUME = "kafka-tls"
# Samples streams on the Redis bus when alerts replicas share them (a Kafka topic's default partitions).
REDIS_SHARDS = 12
# The components on the bus (the collector is not: it speaks to the aggregator alone).
BUS_COMPONENTS = ("aggregator", "gateway", "alerts")
# Where a client's projected ServiceAccount token for the aggregator is mounted (not the API
# server's /var/run/secrets/kubernetes.io/serviceaccount, which these pods do not get).
TOKEN_DIR = "/var/run/secrets/sysmon.dev/serviceaccount"
TOKEN_VOLUME = "aggregator-token"
TOKEN_FILE = "token"
# The image's user (Dockerfile); any non-root id works, this one owns nothing on the node.
RUN_AS = 10001

SPEC_HASH = "sysmon.dev/spec-hash"
CONFIG_HASH = "sysmon.dev/config-hash"
FLEET_LABEL = "sysmon.dev/fleet"

COMPONENTS = ("collector", "aggregator", "gateway", "alerts", SQS_EXPORTER)
# Components with a ServiceAccount of their own: those that call the aggregator, the aggregator
# (which calls TokenReview), and the SQS exporter (its AWS identity). The gateway keeps the
# namespace's default one.
SERVICE_ACCOUNTS = ("collector", "aggregator", "alerts", SQS_EXPORTER)


@dataclass(frozen=True)
class Fleet:
    """What of the MonitoredFleet object the manifests depend on."""

    name: str
    namespace: str
    uid: str
    spec: FleetSpec
    default_image: str = "sysmon:latest"
    # "namespace/name" of the operator's ServiceAccount: the aggregator takes its token as admin
    # (ConfigService.Apply of AlertRules). None: no ServiceAccount is admin.
    operator_account: str | None = None


def key(manifest: Mapping[str, Any]) -> tuple[str, str]:
    """(kind, name): children are all in the fleet's namespace."""
    return manifest["kind"], manifest["metadata"]["name"]


def child_name(fleet: Fleet, component: str) -> str:
    return f"{fleet.name}-{component}"


def aggregator_address(fleet: Fleet) -> str:
    # Fully qualified: collectors use the node's resolver path (hostNetwork) where short names may not search.
    return f"{child_name(fleet, 'aggregator')}.{fleet.namespace}.svc:{AGGREGATOR_GRPC_PORT}"


def selector_labels(fleet: Fleet, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "sysmon",
        "app.kubernetes.io/instance": fleet.name,
        "app.kubernetes.io/component": component,
    }


def labels(fleet: Fleet, component: str) -> dict[str, str]:
    return {
        **selector_labels(fleet, component),
        "app.kubernetes.io/part-of": "sysmon",
        "app.kubernetes.io/managed-by": MANAGER,
        FLEET_LABEL: fleet.name,
    }


def owner_reference(fleet: Fleet) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": FLEET_KIND,
        "name": fleet.name,
        "uid": fleet.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def spec_hash(manifest: Mapping[str, Any]) -> str:
    """Hash of everything the operator sets, less the annotation that carries the hash."""
    meta = {k: v for k, v in manifest["metadata"].items() if k != "annotations"}
    # Other annotations count only where there are some, so that the hashes of objects without
    # any stay what they were.
    annotations = {k: v for k, v in (manifest["metadata"].get("annotations") or {}).items() if k != SPEC_HASH}
    if annotations:
        meta["annotations"] = annotations
    return _hash({**manifest, "metadata": meta})


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _metadata(fleet: Fleet, component: str, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": fleet.namespace,
        "labels": labels(fleet, component),
        "ownerReferences": [owner_reference(fleet)],
    }


def _finish(manifest: dict[str, Any]) -> dict[str, Any]:
    manifest["metadata"]["annotations"] = {**manifest["metadata"].get("annotations", {}),
                                           SPEC_HASH: spec_hash(manifest)}
    return manifest


def _image(fleet: Fleet, override: str | None) -> str:
    return override or fleet.spec.image or fleet.default_image


def _secret_env(name: str, source: SecretSource) -> dict[str, Any]:
    ref = source.secret_key_ref
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def _retention_env(spec: FleetSpec) -> dict[str, str]:
    r = spec.retention
    return {
        "SYSMON_RAW_RETENTION": format_duration(r.raw),
        "SYSMON_ROLLUP_1M_RETENTION": format_duration(r.one_minute),
        "SYSMON_ROLLUP_1H_RETENTION": format_duration(r.one_hour),
    }


def _token_path() -> str:
    return f"{TOKEN_DIR}/{TOKEN_FILE}"


def _client_identity_env(identity: Identity) -> dict[str, str]:
    return {"SYSMON_TOKEN_FILE": _token_path()} if identity.service_account_tokens else {}


def _server_identity_env(fleet: Fleet) -> dict[str, str]:
    identity = fleet.spec.identity
    if not identity.service_account_tokens:
        return {}
    env = {
        "SYSMON_KUBE_AUDIENCE": identity.audience,
        "SYSMON_KUBE_COLLECTORS": service_account_ref(fleet, "collector"),
    }
    if fleet.spec.alerts.enabled:
        env["SYSMON_KUBE_READERS"] = service_account_ref(fleet, "alerts")
    if fleet.operator_account:
        env["SYSMON_KUBE_ADMINS"] = fleet.operator_account
    return env


def _kafka(spec: FleetSpec) -> Kafka | None:
    return spec.bus.kafka if spec.bus.type == "kafka" else None


def _redis_shards(spec: FleetSpec) -> int:
    """Streams the samples are split over on the Redis bus: one, unless alerts replicas share them.
    Replicas beyond this many hold no shard (standbys), as beyond a Kafka topic's partitions."""
    return REDIS_SHARDS if _kafka(spec) is None and spec.alerts.enabled and spec.alerts.replicas > 1 else 1


def _bus_env(spec: FleetSpec) -> dict[str, str]:
    """SYSMON_BUS_* of a component on the bus: for the Redis bus (the default) nothing, or the shard
    count when alerts replicas share the hosts (every component reads and writes the same streams);
    the brokers, topics and TLS/SASL settings for Kafka (the SASL password comes from its Secret)."""
    k = _kafka(spec)
    if k is None:
        shards = _redis_shards(spec)
        return {"SYSMON_BUS_REDIS_SHARDS": str(shards)} if shards > 1 else {}
    env = {
        "SYSMON_BUS_URL": "kafka://" + ",".join(k.bootstrap_servers),
        "SYSMON_BUS_PARTITIONS": str(k.partitions),
        "SYSMON_BUS_REPLICATION": str(k.replication),
        "SYSMON_BUS_TOPIC_PREFIX": k.topic_prefix,
        "SYSMON_BUS_RETENTION": format_duration(k.retention),
    }
    if k.tls is not None:
        env["SYSMON_BUS_TLS"] = "true"
        if k.tls.ca_secret_ref is not None:
            env["SYSMON_BUS_TLS_CA"] = f"{KAFKA_TLS_DIR}/ca.crt"
        if k.tls.client_secret_name:
            env["SYSMON_BUS_TLS_CERT"] = f"{KAFKA_TLS_DIR}/client.crt"
            env["SYSMON_BUS_TLS_KEY"] = f"{KAFKA_TLS_DIR}/client.key"
    if k.sasl is not None:
        env["SYSMON_BUS_SASL_MECHANISM"] = k.sasl.mechanism
        env["SYSMON_BUS_SASL_USERNAME"] = k.sasl.username
    return env


def _bus_secret_env(spec: FleetSpec) -> list[dict[str, Any]]:
    k = _kafka(spec)
    if k is None or k.sasl is None:
        return []
    return [_secret_env("SYSMON_BUS_SASL_PASSWORD", k.sasl.password)]


def _kafka_tls_volume(spec: FleetSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, volumeMounts) of the Kafka CA and client certificate, from their Secrets (a
    Strimzi cluster CA Secret and KafkaUser Secret fit as they are)."""
    k = _kafka(spec)
    if k is None or k.tls is None or (k.tls.ca_secret_ref is None and not k.tls.client_secret_name):
        return [], []
    sources: list[dict[str, Any]] = []
    if k.tls.ca_secret_ref is not None:
        ref = k.tls.ca_secret_ref
        sources.append({"secret": {"name": ref.name, "items": [{"key": ref.key, "path": "ca.crt"}]}})
    if k.tls.client_secret_name:
        sources.append({"secret": {"name": k.tls.client_secret_name, "items": [
            {"key": k.tls.client_cert_key, "path": "client.crt"},
            {"key": k.tls.client_key_key, "path": "client.key"},
        ]}})
    volume = {"name": KAFKA_TLS_VOLUME, "projected": {"defaultMode": 0o440, "sources": sources}}
    return [volume], [{"name": KAFKA_TLS_VOLUME, "mountPath": KAFKA_TLS_DIR, "readOnly": True}]


def _tls_path(key: str) -> str:
    return f"{TLS_DIR}/{key}"


def _server_tls_keys(tls: Tls) -> list[str]:
    return [TLS_CERT, TLS_KEY, TLS_CA] if tls.mutual else [TLS_CERT, TLS_KEY]


def _client_tls_keys(tls: Tls) -> list[str]:
    # Without mutual TLS a client needs only the CA: the aggregator's private key stays off the
    # nodes. With it, clients present the Secret's own pair, as the fleet's spec asks.
    return [TLS_CA, TLS_CERT, TLS_KEY] if tls.mutual else [TLS_CA]


def _server_tls_env(tls: Tls | None) -> dict[str, str]:
    if tls is None:
        return {}
    env = {
        "SYSMON_TLS_CERT": _tls_path(TLS_CERT),
        "SYSMON_TLS_KEY": _tls_path(TLS_KEY),
        "SYSMON_HEALTH_LISTEN": f"0.0.0.0:{AGGREGATOR_HEALTH_PORT}",
    }
    if tls.mutual:
        env["SYSMON_TLS_CLIENT_CA"] = _tls_path(TLS_CA)
    return env


def _client_tls_env(tls: Tls | None) -> dict[str, str]:
    if tls is None:
        return {}
    env = {"SYSMON_TLS_CA": _tls_path(TLS_CA)}
    # Unset, gRPC checks the certificate against the name dialled: the Service's DNS name.
    if tls.server_name:
        env["SYSMON_TLS_SERVER_NAME"] = tls.server_name
    if tls.mutual:
        env["SYSMON_TLS_CLIENT_CERT"] = _tls_path(TLS_CERT)
        env["SYSMON_TLS_CLIENT_KEY"] = _tls_path(TLS_KEY)
    return env


def config_data(fleet: Fleet, component: str) -> dict[str, str]:
    """The SYSMON_* variables of one component; its ConfigMap's data (TLS paths, never key material)."""
    spec = fleet.spec
    if component == "collector":
        host_labels = {"fleet": fleet.name, **spec.host_labels}
        return {
            "SYSMON_AGGREGATOR": aggregator_address(fleet),
            "SYSMON_INTERVAL": format_duration(spec.interval),
            "SYSMON_METRIC_GROUPS": json.dumps(spec.metric_groups),
            "SYSMON_LABELS": json.dumps(host_labels, sort_keys=True),
            "SYSMON_HOST_ROOT": HOST_ROOT,
            "SYSMON_METRICS_LISTEN": f"0.0.0.0:{COLLECTOR_METRICS_PORT}",
            **_client_tls_env(spec.tls),
            **_client_identity_env(spec.identity),
        }
    if component == "aggregator":
        return {
            "SYSMON_LISTEN": f"0.0.0.0:{AGGREGATOR_GRPC_PORT}",
            "SYSMON_METRICS_LISTEN": f"0.0.0.0:{AGGREGATOR_METRICS_PORT}",
            "SYSMON_HTTP_LISTEN": f"0.0.0.0:{AGGREGATOR_INGEST_PORT}",
            **_retention_env(spec),
            **_server_tls_env(spec.tls),
            **_server_identity_env(fleet),
            **_bus_env(spec),
        }
    if component == "gateway":
        return {"SYSMON_LISTEN": f"0.0.0.0:{GATEWAY_PORT}", **_retention_env(spec), **_bus_env(spec)}
    if component == "alerts":
        data = {
            "SYSMON_LISTEN": f"0.0.0.0:{ALERTS_PORT}",
            "SYSMON_AGGREGATOR": aggregator_address(fleet),
            **_client_tls_env(spec.tls),
            **_client_identity_env(spec.identity),
            **_bus_env(spec),
        }
        if spec.gateway.external_url:
            data["SYSMON_EXTERNAL_URL"] = spec.gateway.external_url
        return data
    if component == SQS_EXPORTER and spec.exporters.sqs is not None:
        return _sqs_exporter_env(spec.exporters.sqs)
    raise ValueError(f"unknown component {component!r}")


def _sqs_exporter_env(sqs: SqsExporter) -> dict[str, str]:
    """SqsExporterSettings' variables. The consumer keeps the exporter's default name: one pod, the
    same name across restarts, so it resumes the entries it was handed and never acknowledged."""
    data = {
        "SYSMON_QUEUE_URL": sqs.queue_url,
        "SYSMON_CONSUMER_GROUP": sqs.consumer_group,
        "SYSMON_MESSAGE_BYTES": str(sqs.message_bytes),
        "SYSMON_LINGER": format_duration(sqs.linger),
        "SYSMON_RETRY_MAX": format_duration(sqs.retry_max),
        "SYSMON_METRICS_LISTEN": f"0.0.0.0:{SQS_EXPORTER_METRICS_PORT}",
    }
    if sqs.region:
        data["SYSMON_REGION"] = sqs.region
    if sqs.endpoint_url:
        data["SYSMON_ENDPOINT_URL"] = sqs.endpoint_url
    return data


def _tls_volume(tls: Tls | None, *, server: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, volumeMounts) putting what the server (or a client) needs of the TLS Secret under TLS_DIR."""
    if tls is None:
        return [], []
    keys = _server_tls_keys(tls) if server else _client_tls_keys(tls)
    # Not subPath, so the files follow the Secret when cert-manager renews it (the processes read
    # them at start-up: a restart takes a renewed certificate into use).
    volume = {"name": TLS_VOLUME, "secret": {"secretName": tls.secret_name, "defaultMode": 0o440,
                                             "items": [{"key": k, "path": k} for k in keys]}}
    return [volume], [{"name": TLS_VOLUME, "mountPath": TLS_DIR, "readOnly": True}]


def _token_volume(identity: Identity) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, volumeMounts) of a client's ServiceAccount token for the aggregator, in serviceAccountToken mode.

    Projected and audience-bound: the kubelet requests it for the pod's ServiceAccount and this pod
    only (TokenReview names the pod and its node), replaces it before it expires, and the API
    server refuses it, being for another audience. The kubelet writes it 0600 for the pod's
    runAsUser (0640 with the fsGroup a TLS Secret brings), so no defaultMode is needed.
    """
    if not identity.service_account_tokens:
        return [], []
    volume = {"name": TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": {
        "audience": identity.audience,
        "expirationSeconds": identity.token_expiration_seconds,
        "path": TOKEN_FILE,
    }}]}}
    return [volume], [{"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True}]


def service_account_name(fleet: Fleet, component: str) -> str:
    return child_name(fleet, component)


def service_account_ref(fleet: Fleet, component: str) -> str:
    """namespace/name, as the aggregator's SYSMON_KUBE_* settings name ServiceAccounts."""
    return f"{fleet.namespace}/{service_account_name(fleet, component)}"


def service_account(fleet: Fleet, component: str) -> dict[str, Any]:
    metadata = _metadata(fleet, component, service_account_name(fleet, component))
    sqs = fleet.spec.exporters.sqs
    if component == SQS_EXPORTER and sqs is not None and sqs.service_account_role_arn:
        metadata["annotations"] = {IRSA_ROLE_ANNOTATION: sqs.service_account_role_arn}
    return _finish({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata,
        # No API token unless a pod asks for one itself (only the aggregator's does, to call TokenReview).
        "automountServiceAccountToken": False,
    })


def config_map(fleet: Fleet, component: str) -> dict[str, Any]:
    return _finish({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(fleet, component, child_name(fleet, component)),
        "data": config_data(fleet, component),
    })


def _container(fleet: Fleet, component: str, image: str, resources: Resources,
               env: list[dict[str, Any]], ports: list[dict[str, Any]], probes: dict[str, Any],
               mounts: list[dict[str, Any]], args: list[str] | None = None) -> dict[str, Any]:
    return {
        "name": component,
        "image": image,
        "imagePullPolicy": fleet.spec.image_pull_policy,
        # args, not command: the image's entrypoint is the sysmon CLI (and Tilt's restart wrapper in dev).
        "args": args or ["agent" if component == "collector" else component],
        "envFrom": [{"configMapRef": {"name": child_name(fleet, component)}}],
        "env": env,
        "ports": ports,
        "resources": resources.as_k8s(),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": fleet.spec.read_only_root_filesystem,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *mounts],
        **probes,
    }


def _pod_spec(fleet: Fleet, containers: list[dict[str, Any]], volumes: list[dict[str, Any]] | None = None,
              *, service_account: str | None = None, api_token: bool = False, **extra: Any) -> dict[str, Any]:
    security: dict[str, Any] = {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if any("secret" in v for v in volumes or []):
        # Secret files are mode 0440 (the key is nobody else's): the group is how our user reads
        # them. Only then, so that pods without Secret volumes keep the template they had.
        security["fsGroup"] = RUN_AS
    account = {"serviceAccountName": service_account} if service_account else {}
    return {
        **account,
        # Only an aggregator that reviews ServiceAccount tokens calls the Kubernetes API.
        "automountServiceAccountToken": api_token,
        # Service links would inject variables such as SYSMON_AGGREGATOR_PORT into every pod.
        "enableServiceLinks": False,
        "securityContext": security,
        "containers": containers,
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}, *(volumes or [])],
        **extra,
    }


def _template(fleet: Fleet, component: str, pod_spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {
            "labels": labels(fleet, component),
            "annotations": {CONFIG_HASH: _hash(config_data(fleet, component))},
        },
        "spec": pod_spec,
    }


def _http_probes(port: int, start_seconds: int = 60) -> dict[str, Any]:
    return {
        "startupProbe": {"httpGet": {"path": "/healthz", "port": port}, "periodSeconds": 2,
                         "failureThreshold": start_seconds // 2},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": port}, "periodSeconds": 10,
                          "failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": port}, "periodSeconds": 5,
                           "failureThreshold": 2},
    }


def _metrics_probes(port: int) -> dict[str, Any]:
    """For a process whose only HTTP endpoint is /metrics (the collector, the SQS exporter)."""
    def probe(period: int, failures: int) -> dict[str, Any]:
        return {"httpGet": {"path": "/metrics", "port": port}, "periodSeconds": period, "failureThreshold": failures}

    return {"livenessProbe": probe(10, 3), "readinessProbe": probe(5, 2)}


def collector_daemonset(fleet: Fleet) -> dict[str, Any]:
    spec = fleet.spec
    c = spec.collectors
    tls_volumes, tls_mounts = _tls_volume(spec.tls, server=False)
    token_volumes, token_mounts = _token_volume(spec.identity)
    env = [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]
    if not spec.identity.service_account_tokens:
        env.append(_secret_env("SYSMON_TOKEN", spec.token))
    container = _container(
        fleet, "collector", _image(fleet, c.image), c.resources,
        env=env,
        ports=[{"name": "metrics", "containerPort": COLLECTOR_METRICS_PORT, "protocol": "TCP"}],
        probes=_metrics_probes(COLLECTOR_METRICS_PORT),
        mounts=[{"name": "host-root", "mountPath": HOST_ROOT, "readOnly": True,
                 "mountPropagation": "HostToContainer"}, *tls_mounts, *token_mounts],
    )
    pod = _pod_spec(
        fleet, [container],
        volumes=[{"name": "host-root", "hostPath": {"path": "/", "type": "Directory"}}, *tls_volumes,
                 *token_volumes],
        service_account=service_account_name(fleet, "collector"),
        # The node's processes and interfaces are what is measured, so the pod shares them.
        hostPID=True,
        hostNetwork=True,
        dnsPolicy="ClusterFirstWithHostNet",
        nodeSelector=dict(sorted(c.node_selector.items())),
        tolerations=[t.as_k8s() for t in c.tolerations],
        terminationGracePeriodSeconds=30,
    )
    return _finish({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": _metadata(fleet, "collector", child_name(fleet, "collector")),
        "spec": {
            "selector": {"matchLabels": selector_labels(fleet, "collector")},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": _template(fleet, "collector", pod),
        },
    })


def _deployment(fleet: Fleet, component: str, replicas: int, container: dict[str, Any], *,
                volumes: list[dict[str, Any]] | None = None, singleton: bool = False,
                api_token: bool = False) -> dict[str, Any]:
    # Surge first: a rollout never takes a serving replica away before its successor is ready.
    # A singleton instead stops the old pod before the new one starts, so two never run at once.
    strategy = ({"type": "Recreate"} if singleton
                else {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}})
    return _finish({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(fleet, component, child_name(fleet, component)),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector_labels(fleet, component)},
            "strategy": strategy,
            "template": _template(fleet, component, _pod_spec(
                fleet, [container], volumes, api_token=api_token, terminationGracePeriodSeconds=30,
                service_account=service_account_name(fleet, component) if component in SERVICE_ACCOUNTS else None)),
        },
    })


def _service_env(spec: FleetSpec, *, fleet_token: bool = True) -> list[dict[str, Any]]:
    env = [
        _secret_env("SYSMON_POSTGRES_URL", spec.postgres),
        _secret_env("SYSMON_REDIS_URL", spec.redis),
        *_bus_secret_env(spec),
    ]
    if fleet_token:
        env.append(_secret_env("SYSMON_TOKEN", spec.token))
    return env


def aggregator_deployment(fleet: Fleet) -> dict[str, Any]:
    spec = fleet.spec
    a = spec.aggregator

    # grpc.health.v1 stays open without the token, so the kubelet can ask; it cannot speak TLS, so
    # with TLS on it asks the plaintext health-only listener instead.
    probe_port = AGGREGATOR_HEALTH_PORT if spec.tls else AGGREGATOR_GRPC_PORT

    def grpc_probe(period: int, failures: int) -> dict[str, Any]:
        return {"grpc": {"port": probe_port}, "periodSeconds": period, "failureThreshold": failures}

    ports = [
        {"name": "grpc", "containerPort": AGGREGATOR_GRPC_PORT, "protocol": "TCP"},
        {"name": "metrics", "containerPort": AGGREGATOR_METRICS_PORT, "protocol": "TCP"},
        {"name": "ingest", "containerPort": AGGREGATOR_INGEST_PORT, "protocol": "TCP"},
    ]
    if spec.tls:
        ports.append({"name": "grpc-health", "containerPort": AGGREGATOR_HEALTH_PORT, "protocol": "TCP"})
    tls_volumes, tls_mounts = _tls_volume(spec.tls, server=True)
    kafka_volumes, kafka_mounts = _kafka_tls_volume(spec)
    container = _container(
        fleet, "aggregator", _image(fleet, a.image), a.resources,
        env=_service_env(spec),
        ports=ports,
        probes={
            # Migrations run at start-up: give them time before liveness counts.
            "startupProbe": grpc_probe(2, 60),
            "livenessProbe": grpc_probe(10, 3),
            "readinessProbe": grpc_probe(5, 2),
        },
        mounts=[*tls_mounts, *kafka_mounts],
    )
    # It keeps the fleet token whatever the mode: people, scripts and the gateway's users hold it.
    return _deployment(fleet, "aggregator", a.replicas, container, volumes=[*tls_volumes, *kafka_volumes],
                       api_token=spec.identity.service_account_tokens)


def gateway_deployment(fleet: Fleet) -> dict[str, Any]:
    spec = fleet.spec
    g = spec.gateway
    kafka_volumes, kafka_mounts = _kafka_tls_volume(spec)
    container = _container(
        fleet, "gateway", _image(fleet, g.image), g.resources,
        env=_service_env(spec),
        ports=[{"name": "http", "containerPort": GATEWAY_PORT, "protocol": "TCP"}],
        probes=_http_probes(GATEWAY_PORT),
        mounts=kafka_mounts,
    )
    return _deployment(fleet, "gateway", g.replicas, container, volumes=kafka_volumes or None)


def alerts_deployment(fleet: Fleet) -> dict[str, Any]:
    spec = fleet.spec
    al = spec.alerts
    tls_volumes, tls_mounts = _tls_volume(spec.tls, server=False)
    token_volumes, token_mounts = _token_volume(spec.identity)
    kafka_volumes, kafka_mounts = _kafka_tls_volume(spec)
    shared = _kafka(spec) is not None or _redis_shards(spec) > 1
    env = _service_env(spec, fleet_token=not spec.identity.service_account_tokens)
    if shared:
        # A member of the consumer group per pod, named for it in the logs, the broker's group list
        # and the Redis leases.
        env.append({"name": "SYSMON_CONSUMER", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
    container = _container(
        fleet, "alerts", _image(fleet, al.image), al.resources,
        # The fleet token is only how it reaches the aggregator: with its own token it needs none.
        env=env,
        ports=[{"name": "http", "containerPort": ALERTS_PORT, "protocol": "TCP"}],
        probes=_http_probes(ALERTS_PORT),
        mounts=[*tls_mounts, *token_mounts, *kafka_mounts],
    )
    # Replicas share the hosts (a rollout surges, the group rebalances or the leases move); one pod
    # on the one Redis stream is stopped before its successor starts.
    return _deployment(fleet, "alerts", al.replicas, container,
                       volumes=[*tls_volumes, *token_volumes, *kafka_volumes], singleton=not shared)


def sqs_exporter_deployment(fleet: Fleet) -> dict[str, Any]:
    """One pod, stopped before its successor starts. The Redis consumer group hands a consumer's
    unacknowledged entries back only to a consumer of the same name, and nothing claims a gone
    consumer's: so the exporter keeps one name, and two pods of that name would both send its
    pending entries (pods of their own names would leave a replaced pod's entries unsent)."""
    spec = fleet.spec
    sqs = spec.exporters.sqs
    assert sqs is not None
    env = [_secret_env("SYSMON_REDIS_URL", spec.redis)]
    if sqs.credentials_secret is not None:
        c = sqs.credentials_secret
        env += [
            {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": c.name, "key": c.access_key_id_key}}},
            {"name": "AWS_SECRET_ACCESS_KEY",
             "valueFrom": {"secretKeyRef": {"name": c.name, "key": c.secret_access_key_key}}},
        ]
    container = _container(
        fleet, SQS_EXPORTER, _image(fleet, sqs.image), sqs.resources,
        env=env,
        ports=[{"name": "metrics", "containerPort": SQS_EXPORTER_METRICS_PORT, "protocol": "TCP"}],
        probes=_metrics_probes(SQS_EXPORTER_METRICS_PORT),
        mounts=[],
        args=["export", "sqs"],
    )
    return _deployment(fleet, SQS_EXPORTER, 1, container, singleton=True)


def alerts_disruption_budget(fleet: Fleet) -> dict[str, Any]:
    """With replicas sharing the hosts, a node drain takes one at a time: the others take its
    hosts over while it moves."""
    return _finish({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(fleet, "alerts", child_name(fleet, "alerts")),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(fleet, "alerts")}},
    })


def service(fleet: Fleet, component: str) -> dict[str, Any]:
    ports: list[dict[str, Any]]
    if component == "aggregator":
        ports = [
            {"name": "grpc", "port": AGGREGATOR_GRPC_PORT, "targetPort": "grpc", "protocol": "TCP",
             "appProtocol": "grpc"},
            {"name": "metrics", "port": AGGREGATOR_METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"},
            {"name": "ingest", "port": AGGREGATOR_INGEST_PORT, "targetPort": "ingest", "protocol": "TCP",
             "appProtocol": "http"},
        ]
    else:
        port = GATEWAY_PORT if component == "gateway" else ALERTS_PORT
        ports = [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}]
    return _finish({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(fleet, component, child_name(fleet, component)),
        "spec": {"type": "ClusterIP", "selector": selector_labels(fleet, component), "ports": ports},
    })


def enabled_components(spec: FleetSpec) -> list[str]:
    out = ["collector", "aggregator"]
    if spec.gateway.enabled:
        out.append("gateway")
    if spec.alerts.enabled:
        out.append("alerts")
    if spec.exporters.sqs is not None:
        out.append(SQS_EXPORTER)
    return out


def desired_children(fleet: Fleet) -> list[dict[str, Any]]:
    """Every object the fleet should own, ServiceAccounts and ConfigMaps first so pods never start without them."""
    components = enabled_components(fleet.spec)
    out = [service_account(fleet, c) for c in components if c in SERVICE_ACCOUNTS]
    out += [config_map(fleet, c) for c in components]
    out.append(collector_daemonset(fleet))
    out.append(aggregator_deployment(fleet))
    out.append(service(fleet, "aggregator"))
    if "gateway" in components:
        out += [gateway_deployment(fleet), service(fleet, "gateway")]
    if "alerts" in components:
        out += [alerts_deployment(fleet), service(fleet, "alerts")]
        if fleet.spec.alerts.replicas > 1:
            out.append(alerts_disruption_budget(fleet))
    if SQS_EXPORTER in components:
        out.append(sqs_exporter_deployment(fleet))
    return out


def possible_children(fleet: Fleet) -> list[tuple[str, str]]:
    """(kind, name) of everything a fleet may own, enabled or not: what to delete when disabled."""
    out = [("ServiceAccount", service_account_name(fleet, c)) for c in SERVICE_ACCOUNTS]
    out += [("ConfigMap", child_name(fleet, c)) for c in COMPONENTS]
    out.append(("DaemonSet", child_name(fleet, "collector")))
    for c in ("aggregator", "gateway", "alerts"):
        out += [("Deployment", child_name(fleet, c)), ("Service", child_name(fleet, c))]
    out.append(("PodDisruptionBudget", child_name(fleet, "alerts")))
    out.append(("Deployment", child_name(fleet, SQS_EXPORTER)))
    return out
