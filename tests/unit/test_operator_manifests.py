"""MonitoredFleet -> children, without a cluster: the set of objects, that each is valid for
Kubernetes 1.30+, secure by default, owned by the fleet, and that each component reads from its
ConfigMap exactly what the fleet says."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from sysmon.core.settings import AgentSettings, AggregatorSettings, AlertsSettings, GatewaySettings, is_loopback
from sysmon.operator import manifests as m
from sysmon.operator.fleet_spec import FleetSpec
from tests.k8s_schemas import EXAMPLES, load_docs, manifest_errors

REF = {"secretKeyRef": {"name": "sysmon-postgres", "key": "url"}}
BASE = {"postgres": REF, "redis": {"secretKeyRef": {"name": "sysmon-redis", "key": "url"}},
        "token": {"secretKeyRef": {"name": "sysmon-token", "key": "token"}}}


OPERATOR = "monitoring/sysmon-operator"
FLEET_TOKEN = {"identity": {"mode": "fleetToken"}}


def fleet(spec: dict[str, Any] | None = None, name: str = "prod", operator_account: str | None = OPERATOR) -> m.Fleet:
    return m.Fleet(name, "monitoring", "0b5e-uid", FleetSpec.model_validate({**BASE, **(spec or {})}),
                   default_image="sysmon:default", operator_account=operator_account)


def by_key(children: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {m.key(c): c for c in children}


def containers(children: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for c in children:
        if c["kind"] in ("Deployment", "DaemonSet"):
            pod = c["spec"]["template"]["spec"]
            for container in pod["containers"]:
                yield pod, container


@pytest.mark.parametrize("identity", [{}, FLEET_TOKEN], ids=["serviceAccountToken", "fleetToken"])
def test_a_fleet_owns_exactly_its_workloads_services_configmaps_and_service_accounts(identity: dict[str, Any]) -> None:
    children = m.desired_children(fleet(identity))
    assert sorted(m.key(c) for c in children) == sorted([
        ("ServiceAccount", "prod-collector"), ("ServiceAccount", "prod-aggregator"), ("ServiceAccount", "prod-alerts"),
        ("ConfigMap", "prod-collector"), ("ConfigMap", "prod-aggregator"), ("ConfigMap", "prod-gateway"),
        ("ConfigMap", "prod-alerts"),
        ("DaemonSet", "prod-collector"),
        ("Deployment", "prod-aggregator"), ("Service", "prod-aggregator"),
        ("Deployment", "prod-gateway"), ("Service", "prod-gateway"),
        ("Deployment", "prod-alerts"), ("Service", "prod-alerts"),
    ])
    for c in children:
        assert c["metadata"]["namespace"] == "monitoring"
        (ref,) = c["metadata"]["ownerReferences"]
        # Deleting the fleet deletes this (garbage collection follows the controller reference).
        assert ref == {"apiVersion": "sysmon.dev/v1alpha1", "kind": "MonitoredFleet", "name": "prod",
                       "uid": "0b5e-uid", "controller": True, "blockOwnerDeletion": True}
        assert c["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "sysmon-operator"


def test_disabled_gateway_and_alerts_are_not_built() -> None:
    keys = {m.key(c) for c in m.desired_children(fleet({"gateway": {"enabled": False},
                                                        "alerts": {"enabled": False}}))}
    assert not {k for k in keys if "gateway" in k[1] or "alerts" in k[1]}
    assert ("Deployment", "prod-aggregator") in keys
    # ... yet they are among what a fleet may own, so the reconciler deletes leftovers.
    possible = set(m.possible_children(fleet()))
    assert {("Deployment", "prod-gateway"), ("Service", "prod-alerts"), ("ConfigMap", "prod-gateway"),
            ("ServiceAccount", "prod-alerts")} <= possible


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("monitoredfleet*.yaml")), ids=lambda p: p.name)
def test_every_built_manifest_validates_against_the_kubernetes_schemas(example: Any) -> None:
    (doc,) = load_docs(example)
    f = m.Fleet(doc["metadata"]["name"], "sysmon", "uid", FleetSpec.model_validate(doc["spec"]))
    for child in m.desired_children(f):
        assert manifest_errors(child) == [], m.key(child)


@pytest.mark.parametrize("identity", [{}, FLEET_TOKEN], ids=["serviceAccountToken", "fleetToken"])
def test_pods_are_locked_down(identity: dict[str, Any]) -> None:
    for pod, c in containers(m.desired_children(fleet(identity))):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        # No Kubernetes API token, but for the aggregator that reviews ServiceAccount tokens.
        assert pod["automountServiceAccountToken"] is (c["name"] == "aggregator" and not identity)
        assert pod["enableServiceLinks"] is False
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert "command" not in c, "args only: the entrypoint is the sysmon CLI"


def test_secrets_are_referenced_never_copied() -> None:
    children = m.desired_children(fleet())
    for _, c in containers(children):
        for env in c["env"]:
            if env["name"] in ("SYSMON_TOKEN", "SYSMON_POSTGRES_URL", "SYSMON_REDIS_URL"):
                assert "value" not in env
                assert "secretKeyRef" in env["valueFrom"]
    for c in children:
        if c["kind"] == "ConfigMap":
            assert not {"SYSMON_TOKEN", "SYSMON_POSTGRES_URL", "SYSMON_REDIS_URL"} & set(c["data"])
    services = {c["name"]: {e["name"] for e in c["env"]} for _, c in containers(children)}
    # Collectors and the alerts service present their own ServiceAccount tokens: no fleet token.
    assert services["collector"] == {"NODE_NAME"}
    assert services["alerts"] == {"SYSMON_POSTGRES_URL", "SYSMON_REDIS_URL"}
    # People and scripts (the dashboard's users) still hold the fleet token.
    assert services["aggregator"] == {"SYSMON_POSTGRES_URL", "SYSMON_REDIS_URL", "SYSMON_TOKEN"}
    assert services["gateway"] == {"SYSMON_POSTGRES_URL", "SYSMON_REDIS_URL", "SYSMON_TOKEN"}
    services = {c["name"]: {e["name"] for e in c["env"]} for _, c in containers(m.desired_children(fleet(FLEET_TOKEN)))}
    assert services["collector"] == {"NODE_NAME", "SYSMON_TOKEN"}
    assert services["alerts"] == {"SYSMON_POSTGRES_URL", "SYSMON_REDIS_URL", "SYSMON_TOKEN"}


def test_every_container_has_probes_grpc_for_the_aggregator_http_for_the_rest() -> None:
    probes = {c["name"]: c for _, c in containers(m.desired_children(fleet()))}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert probes["aggregator"][probe]["grpc"] == {"port": 50051}
    for name, port in (("gateway", 8080), ("alerts", 8081)):
        assert probes[name]["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
        assert probes[name]["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
    assert probes["collector"]["livenessProbe"]["httpGet"]["port"] == 9465


def test_collectors_see_the_host_and_run_where_the_fleet_says() -> None:
    f = fleet({"collectors": {"nodeSelector": {"kubernetes.io/os": "linux"},
                              "tolerations": [{"key": "node-role.kubernetes.io/control-plane",
                                               "operator": "Exists", "effect": "NoSchedule"}]}})
    ds = by_key(m.desired_children(f))["DaemonSet", "prod-collector"]
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"] == [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists",
                                   "effect": "NoSchedule"}]
    (c,) = pod["containers"]
    assert {"name": "host-root", "mountPath": "/host", "readOnly": True,
            "mountPropagation": "HostToContainer"} in c["volumeMounts"]
    assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in c["env"]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for k in list(os.environ):
        if k.startswith("SYSMON_") or k == "NODE_NAME":
            monkeypatch.delenv(k)
    return monkeypatch


def test_the_collector_reads_the_fleets_settings_from_its_configmap(clean_env: pytest.MonkeyPatch) -> None:
    f = fleet({"interval": "10s", "metricGroups": ["cpu", "memory"], "hostLabels": {"env": "prod"}})
    data = by_key(m.desired_children(f))["ConfigMap", "prod-collector"]["data"]
    for k, v in data.items():
        clean_env.setenv(k, v)
    clean_env.setenv("NODE_NAME", "node-7")
    agent = AgentSettings()
    assert agent.interval == timedelta(seconds=10)
    assert agent.metric_groups == ["cpu", "memory"]
    assert agent.labels == {"env": "prod", "fleet": "prod"}
    assert agent.host_id == "node-7"
    assert agent.host_root == "/host"
    assert agent.aggregator == "prod-aggregator.monitoring.svc:50051"


def test_the_services_read_retention_and_listen_beyond_loopback(clean_env: pytest.MonkeyPatch) -> None:
    f = fleet({"retention": {"raw": "48h", "oneMinute": "14d", "oneHour": "365d"}})
    children = by_key(m.desired_children(f))
    for k, v in children["ConfigMap", "prod-aggregator"]["data"].items():
        clean_env.setenv(k, v)
    agg = AggregatorSettings()
    assert agg.raw_retention == timedelta(hours=48)
    assert agg.rollup_1m_retention == timedelta(days=14)
    assert agg.rollup_1h_retention == timedelta(days=365)
    # Not loopback: the aggregator then insists on the token, which the Secret provides.
    assert not is_loopback(agg.listen)
    for k in children["ConfigMap", "prod-aggregator"]["data"]:
        clean_env.delenv(k)
    for k, v in children["ConfigMap", "prod-gateway"]["data"].items():
        clean_env.setenv(k, v)
    gw = GatewaySettings()
    assert gw.listen == "0.0.0.0:8080"
    assert gw.raw_retention == timedelta(hours=48)


def test_the_alerts_service_runs_once_and_reaches_the_aggregator(clean_env: pytest.MonkeyPatch) -> None:
    """Its windows live in memory and it resumes its bus consumer by name: two at once would evaluate
    every rule twice, so a rollout stops the old pod before starting the new one."""
    children = by_key(m.desired_children(fleet({"aggregator": {"replicas": 3}, "gateway": {"replicas": 2}})))
    alerts = children["Deployment", "prod-alerts"]["spec"]
    assert alerts["replicas"] == 1
    assert alerts["strategy"] == {"type": "Recreate"}
    assert children["Deployment", "prod-aggregator"]["spec"]["strategy"]["type"] == "RollingUpdate"
    for k, v in children["ConfigMap", "prod-alerts"]["data"].items():
        clean_env.setenv(k, v)
    settings = AlertsSettings()
    assert settings.aggregator == "prod-aggregator.monitoring.svc:50051"
    assert settings.listen == "0.0.0.0:8081"


def test_images_component_over_fleet_over_operator_default() -> None:
    images = {c["name"]: c["image"] for _, c in containers(m.desired_children(fleet()))}
    assert set(images.values()) == {"sysmon:default"}
    f = fleet({"image": "sysmon:1.2", "aggregator": {"image": "sysmon:1.3-rc"}})
    images = {c["name"]: c["image"] for _, c in containers(m.desired_children(f))}
    assert images == {"collector": "sysmon:1.2", "aggregator": "sysmon:1.3-rc", "gateway": "sysmon:1.2",
                      "alerts": "sysmon:1.2"}


def test_a_config_change_touches_only_the_pods_that_read_it() -> None:
    def templates(f: m.Fleet) -> dict[str, Any]:
        return {m.key(c): c["spec"]["template"] for c in m.desired_children(f)
                if c["kind"] in ("Deployment", "DaemonSet")}

    before = templates(fleet())
    assert templates(fleet()) == before, "building is deterministic"
    after = templates(fleet({"interval": "15s"}))
    assert [k for k in before if before[k] != after[k]] == [("DaemonSet", "prod-collector")]
    after = templates(fleet({"retention": {"raw": "12h"}}))
    changed = sorted(k for k in before if before[k] != after[k])
    assert changed == [("Deployment", "prod-aggregator"), ("Deployment", "prod-gateway")]


# --- TLS -----------------------------------------------------------------------------------------

TLS = {"secretName": "prod-aggregator-tls"}


def pod_of(children: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return by_key(children)[kind, name]["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def secret_files(pod: dict[str, Any]) -> dict[str, str]:
    """path in the container -> Secret it comes from, for every file a Secret volume puts there."""
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    out = {}
    for mount in container["volumeMounts"]:
        secret = volumes[mount["name"]].get("secret")
        if secret is None:
            continue
        assert mount["readOnly"] is True
        assert "subPath" not in mount, "a subPath mount never sees a renewed certificate"
        for item in secret["items"]:
            out[f"{mount['mountPath']}/{item['path']}"] = secret["secretName"]
    return out


def load_env(monkeypatch: pytest.MonkeyPatch, data: dict[str, str]) -> None:
    for k in list(os.environ):
        if k.startswith("SYSMON_") or k == "NODE_NAME":
            monkeypatch.delenv(k)
    for k, v in data.items():
        monkeypatch.setenv(k, v)


def test_without_tls_nothing_about_tls_is_built() -> None:
    children = m.desired_children(fleet())
    for c in children:
        if c["kind"] == "ConfigMap":
            assert not [k for k in c["data"] if k.startswith("SYSMON_TLS") or k == "SYSMON_HEALTH_LISTEN"]
    for pod, c in containers(children):
        assert secret_files(pod) == {}
        assert "fsGroup" not in pod["securityContext"]
        assert 50052 not in [p["containerPort"] for p in c["ports"]]


@pytest.mark.parametrize("mutual", [False, True])
def test_tls_mounts_of_the_secret_only_what_each_side_needs(mutual: bool) -> None:
    children = m.desired_children(fleet({"tls": {**TLS, "mutual": mutual}}))
    d = "/etc/sysmon/tls"
    server = {f"{d}/tls.crt", f"{d}/tls.key"} | ({f"{d}/ca.crt"} if mutual else set())
    # Without mutual TLS the aggregator's private key never leaves its pods (collectors run on every node).
    client = {f"{d}/ca.crt"} | ({f"{d}/tls.crt", f"{d}/tls.key"} if mutual else set())
    expected = {("Deployment", "prod-aggregator"): server, ("DaemonSet", "prod-collector"): client,
                ("Deployment", "prod-alerts"): client, ("Deployment", "prod-gateway"): set()}
    for (kind, name), files in expected.items():
        pod = pod_of(children, kind, name)
        assert set(secret_files(pod)) == files, name
        assert set(secret_files(pod).values()) <= {"prod-aggregator-tls"}
        if files:
            (volume,) = [v for v in pod["volumes"] if "secret" in v]
            # Readable by the pod's user through its group only.
            assert volume["secret"]["defaultMode"] == 0o440
            assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"] == m.RUN_AS
        else:
            assert "fsGroup" not in pod["securityContext"]


def test_tls_paths_go_in_configmaps_and_key_material_nowhere() -> None:
    children = m.desired_children(fleet({"tls": {**TLS, "mutual": True, "serverName": "aggregator.example"},
                                         "gateway": {"externalURL": "https://sysmon.example.com"}}))
    data = {c["metadata"]["name"]: c["data"] for c in children if c["kind"] == "ConfigMap"}
    d = "/etc/sysmon/tls"
    assert {k: v for k, v in data["prod-aggregator"].items() if "TLS" in k or "HEALTH" in k} == {
        "SYSMON_TLS_CERT": f"{d}/tls.crt", "SYSMON_TLS_KEY": f"{d}/tls.key", "SYSMON_TLS_CLIENT_CA": f"{d}/ca.crt",
        "SYSMON_HEALTH_LISTEN": "0.0.0.0:50052"}
    client = {"SYSMON_TLS_CA": f"{d}/ca.crt", "SYSMON_TLS_SERVER_NAME": "aggregator.example",
              "SYSMON_TLS_CLIENT_CERT": f"{d}/tls.crt", "SYSMON_TLS_CLIENT_KEY": f"{d}/tls.key"}
    for name in ("prod-collector", "prod-alerts"):
        assert {k: v for k, v in data[name].items() if "TLS" in k} == client, name
    assert not [k for k in data["prod-gateway"] if "TLS" in k]
    assert data["prod-alerts"]["SYSMON_EXTERNAL_URL"] == "https://sysmon.example.com"
    for cm in data.values():
        assert not any("BEGIN" in v for v in cm.values())
    # The Secret is only ever a volume: no environment variable carries any of it.
    for _, c in containers(children):
        refs = [e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") for e in c["env"]]
        assert TLS["secretName"] not in refs


def test_with_tls_the_aggregator_is_probed_on_its_plaintext_health_port() -> None:
    children = m.desired_children(fleet({"tls": TLS}))
    (c,) = pod_of(children, "Deployment", "prod-aggregator")["containers"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        # The kubelet's gRPC probe has no TLS: it asks the health-only listener.
        assert c[probe]["grpc"] == {"port": 50052}
    assert {"name": "grpc-health", "containerPort": 50052, "protocol": "TCP"} in c["ports"]
    assert by_key(children)["ConfigMap", "prod-aggregator"]["data"]["SYSMON_HEALTH_LISTEN"] == "0.0.0.0:50052"
    # Probes go to the pod; the Service offers only the TLS port (and metrics, and the HTTP ingest).
    svc = by_key(children)["Service", "prod-aggregator"]
    assert [p["port"] for p in svc["spec"]["ports"]] == [50051, 9464, 9201]


def test_the_aggregator_takes_remote_write_and_otlp_http_on_its_service() -> None:
    children = m.desired_children(fleet({}))
    assert by_key(children)["ConfigMap", "prod-aggregator"]["data"]["SYSMON_HTTP_LISTEN"] == "0.0.0.0:9201"
    (c,) = pod_of(children, "Deployment", "prod-aggregator")["containers"]
    assert {"name": "ingest", "containerPort": 9201, "protocol": "TCP"} in c["ports"]
    svc = by_key(children)["Service", "prod-aggregator"]
    assert {"name": "ingest", "port": 9201, "targetPort": "ingest", "protocol": "TCP",
            "appProtocol": "http"} in svc["spec"]["ports"]


@pytest.mark.parametrize("mutual", [False, True])
def test_each_container_loads_a_tls_server_or_client_from_its_env_and_mounts(
    clean_env: pytest.MonkeyPatch, mutual: bool
) -> None:
    children = m.desired_children(fleet({"tls": {**TLS, "mutual": mutual}}))
    configmaps = {c["metadata"]["name"]: c["data"] for c in children if c["kind"] == "ConfigMap"}

    load_env(clean_env, configmaps["prod-aggregator"])
    agg = AggregatorSettings()
    mounted = secret_files(pod_of(children, "Deployment", "prod-aggregator"))
    assert agg.tls_cert is not None
    assert str(agg.tls_cert) in mounted
    assert agg.tls_key is not None
    assert str(agg.tls_key) in mounted
    assert agg.tls_cert.name == "tls.crt"
    assert agg.tls_key.name == "tls.key"
    if mutual:
        assert agg.tls_client_ca is not None
        assert str(agg.tls_client_ca) in mounted
        assert agg.tls_client_ca.name == "ca.crt"
    else:
        assert agg.tls_client_ca is None
    assert agg.health_listen == "0.0.0.0:50052"
    assert not is_loopback(agg.health_listen)

    for settings_type, kind, name in ((AgentSettings, "DaemonSet", "prod-collector"),
                                      (AlertsSettings, "Deployment", "prod-alerts")):
        load_env(clean_env, configmaps[name])
        client = settings_type()
        mounted = secret_files(pod_of(children, kind, name))
        assert client.uses_tls, name
        assert client.tls_ca is not None
        assert str(client.tls_ca) in mounted
        assert client.tls_ca.name == "ca.crt"
        # No override: the certificate is checked against the name dialled, the Service's DNS name.
        assert client.tls_server_name is None
        assert client.aggregator == "prod-aggregator.monitoring.svc:50051"
        if mutual:
            assert client.tls_client_cert is not None
            assert str(client.tls_client_cert) in mounted
            assert client.tls_client_key is not None
            assert str(client.tls_client_key) in mounted
        else:
            assert client.tls_client_cert is None
            assert client.tls_client_key is None


def test_without_tls_every_container_loads_plaintext(clean_env: pytest.MonkeyPatch) -> None:
    children = m.desired_children(fleet())
    configmaps = {c["metadata"]["name"]: c["data"] for c in children if c["kind"] == "ConfigMap"}
    load_env(clean_env, configmaps["prod-aggregator"])
    agg = AggregatorSettings()
    assert agg.tls_cert is None
    assert agg.health_listen == ""
    for settings_type, name in ((AgentSettings, "prod-collector"), (AlertsSettings, "prod-alerts")):
        load_env(clean_env, configmaps[name])
        assert not settings_type().uses_tls


def test_the_external_url_reaches_the_alerts_service_and_is_otherwise_its_default(
    clean_env: pytest.MonkeyPatch,
) -> None:
    default = AlertsSettings.model_fields["external_url"].default
    data = by_key(m.desired_children(fleet()))["ConfigMap", "prod-alerts"]["data"]
    assert "SYSMON_EXTERNAL_URL" not in data
    load_env(clean_env, data)
    assert AlertsSettings().external_url == default
    data = by_key(m.desired_children(fleet({"gateway": {"externalURL": "https://sysmon.example.com/x"}})))[
        "ConfigMap", "prod-alerts"]["data"]
    load_env(clean_env, data)
    assert AlertsSettings().external_url == "https://sysmon.example.com/x"


def _templates(f: m.Fleet) -> dict[tuple[str, str], Any]:
    return {m.key(c): c["spec"]["template"] for c in m.desired_children(f) if c["kind"] in ("Deployment", "DaemonSet")}


def _rolled(before: m.Fleet, after: m.Fleet) -> list[str]:
    a, b = _templates(before), _templates(after)
    return sorted(name for (_, name) in a if a[_, name] != b[_, name])


@pytest.mark.parametrize(
    ("before", "after", "rolled"),
    [
        ({}, {"tls": TLS}, ["prod-aggregator", "prod-alerts", "prod-collector"]),
        ({"tls": TLS}, {}, ["prod-aggregator", "prod-alerts", "prod-collector"]),
        ({"tls": TLS}, {"tls": {"secretName": "other-tls"}}, ["prod-aggregator", "prod-alerts", "prod-collector"]),
        ({"tls": TLS}, {"tls": {**TLS, "mutual": True}}, ["prod-aggregator", "prod-alerts", "prod-collector"]),
        # Only the clients check the name.
        ({"tls": TLS}, {"tls": {**TLS, "serverName": "aggregator.example"}}, ["prod-alerts", "prod-collector"]),
        ({}, {"gateway": {"externalURL": "https://sysmon.example.com"}}, ["prod-alerts"]),
        ({"tls": TLS}, {"tls": TLS}, []),
    ],
)
def test_a_tls_change_rolls_exactly_the_pods_that_use_it(
    before: dict[str, Any], after: dict[str, Any], rolled: list[str]
) -> None:
    assert _rolled(fleet(before), fleet(after)) == rolled


def test_a_tls_setting_read_from_the_configmap_changes_the_config_hash() -> None:
    """A value that only the ConfigMap carries still restarts its readers: the hash is on the template."""
    def config_hash(f: m.Fleet, kind: str, name: str) -> str:
        return by_key(m.desired_children(f))[kind, name]["spec"]["template"]["metadata"]["annotations"][m.CONFIG_HASH]

    plain, named = fleet({"tls": TLS}), fleet({"tls": {**TLS, "serverName": "aggregator.example"}})
    assert config_hash(plain, "DaemonSet", "prod-collector") != config_hash(named, "DaemonSet", "prod-collector")
    assert config_hash(plain, "Deployment", "prod-alerts") != config_hash(named, "Deployment", "prod-alerts")
    assert config_hash(plain, "Deployment", "prod-aggregator") == config_hash(named, "Deployment", "prod-aggregator")


# --- identity ------------------------------------------------------------------------------------


def token_files(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """path in the container -> the projected serviceAccountToken source that writes it."""
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    out = {}
    for mount in container["volumeMounts"]:
        for source in volumes[mount["name"]].get("projected", {}).get("sources", []):
            if "serviceAccountToken" in source:
                assert mount["readOnly"] is True
                assert "subPath" not in mount, "a subPath mount never sees the kubelet's renewed token"
                out[f"{mount['mountPath']}/{source['serviceAccountToken']['path']}"] = source["serviceAccountToken"]
    return out


CLIENTS = ((AgentSettings, "DaemonSet", "prod-collector"), (AlertsSettings, "Deployment", "prod-alerts"))


def test_service_account_tokens_are_the_default_and_each_client_reads_its_projected_token(
    clean_env: pytest.MonkeyPatch,
) -> None:
    children = m.desired_children(fleet())
    configmaps = {c["metadata"]["name"]: c["data"] for c in children if c["kind"] == "ConfigMap"}
    for settings_type, kind, name in CLIENTS:
        pod = pod_of(children, kind, name)
        assert pod["serviceAccountName"] == name
        # Only the audience-bound token for the aggregator; no Kubernetes API token.
        assert pod["automountServiceAccountToken"] is False
        files = token_files(pod)
        assert files == {"/var/run/secrets/sysmon.dev/serviceaccount/token": {
            "audience": "sysmon.dev", "expirationSeconds": 3600, "path": "token"}}, name
        load_env(clean_env, configmaps[name])
        settings = settings_type()
        # The client reads the token from the mounted file at every connection, and has no other.
        assert str(settings.token_file) in files
        assert settings.token is None
        (container,) = pod["containers"]
        assert "SYSMON_TOKEN" not in {e["name"] for e in container["env"]}


def test_a_client_presents_what_the_kubelet_last_wrote(tmp_path: Any, clean_env: pytest.MonkeyPatch) -> None:
    """The settings the collector's ConfigMap gives, pointed at a file that is rotated under it."""
    from sysmon.core.client import call_metadata

    data = by_key(m.desired_children(fleet()))["ConfigMap", "prod-collector"]["data"]
    load_env(clean_env, {**data, "SYSMON_TOKEN_FILE": str(tmp_path / "token")})
    settings = AgentSettings()
    (tmp_path / "token").write_text("first.jwt.token\n")
    assert call_metadata(settings) == (("authorization", "Bearer first.jwt.token"),)
    (tmp_path / "token").write_text("rotated.jwt.token")
    assert call_metadata(settings) == (("authorization", "Bearer rotated.jwt.token"),)


def test_the_aggregator_reviews_tokens_with_its_own_api_token_and_keeps_the_fleet_token(
    clean_env: pytest.MonkeyPatch,
) -> None:
    children = m.desired_children(fleet())
    pod = pod_of(children, "Deployment", "prod-aggregator")
    assert pod["serviceAccountName"] == "prod-aggregator"
    assert pod["automountServiceAccountToken"] is True
    assert token_files(pod) == {}
    (container,) = pod["containers"]
    token = next(e for e in container["env"] if e["name"] == "SYSMON_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == BASE["token"]["secretKeyRef"]

    load_env(clean_env, by_key(children)["ConfigMap", "prod-aggregator"]["data"])
    agg = AggregatorSettings()
    assert agg.kube_audience == "sysmon.dev"
    assert agg.kube_collectors == ["monitoring/prod-collector"]
    assert agg.kube_readers == ["monitoring/prod-alerts"]
    assert agg.kube_admins == [OPERATOR]
    # The gateway neither calls the aggregator nor reviews tokens: the fleet token, as before.
    gateway = pod_of(children, "Deployment", "prod-gateway")
    assert "serviceAccountName" not in gateway
    assert gateway["automountServiceAccountToken"] is False
    assert not [k for k in by_key(children)["ConfigMap", "prod-gateway"]["data"] if "KUBE" in k or "TOKEN" in k]


async def test_the_aggregator_so_configured_takes_each_service_account_for_what_it_is(
    clean_env: pytest.MonkeyPatch,
) -> None:
    """The review's answer for each pod's token, through the TokenReviewer the aggregator builds from
    the settings the operator wrote: collectors for their node only, alerts as reader, the operator as
    admin, and any other ServiceAccount of the namespace (the gateway's default one) refused."""
    from kubernetes import client

    from sysmon.core.identity import InvalidCredential, Scope
    from sysmon.core.identity.kubernetes import NODE_NAME, Review, TokenReviewer

    load_env(clean_env, by_key(m.desired_children(fleet()))["ConfigMap", "prod-aggregator"]["data"])
    agg = AggregatorSettings()
    assert agg.kube_audience is not None
    reviewer = TokenReviewer(client.ApiClient(), agg.kube_audience, collectors=agg.kube_collectors,
                             readers=agg.kube_readers, admins=agg.kube_admins)
    reviews = {
        "collector": Review(True, "system:serviceaccount:monitoring:prod-collector", ("sysmon.dev",),
                            {NODE_NAME: ["node-7"]}),
        "alerts": Review(True, "system:serviceaccount:monitoring:prod-alerts", ("sysmon.dev",), {}),
        "operator": Review(True, "system:serviceaccount:monitoring:sysmon-operator", ("sysmon.dev",), {}),
        "default": Review(True, "system:serviceaccount:monitoring:default", ("sysmon.dev",), {}),
    }

    async def review(token: str) -> Review:
        return reviews[token]

    reviewer.review = review  # type: ignore[method-assign]
    collector = await reviewer.principal("collector")
    assert collector.scopes == {Scope.COLLECTOR}
    assert collector.may_speak_for("node-7")
    assert not collector.may_speak_for("node-8")
    assert (await reviewer.principal("alerts")).scopes == {Scope.READER}
    assert (await reviewer.principal("operator")).scopes == {Scope.ADMIN}
    with pytest.raises(InvalidCredential):
        await reviewer.principal("default")


def test_service_accounts_are_the_fleets_and_carry_no_api_token() -> None:
    children = by_key(m.desired_children(fleet(SQS_IRSA)))
    for component in m.SERVICE_ACCOUNTS:
        sa = children["ServiceAccount", f"prod-{component}"]
        assert sa["automountServiceAccountToken"] is False
        assert sa["metadata"]["ownerReferences"][0]["uid"] == "0b5e-uid"
        assert sa["metadata"]["labels"]["app.kubernetes.io/component"] == component
    # First, with the ConfigMaps: no pod is created for a ServiceAccount that does not exist yet.
    kinds = [c["kind"] for c in m.desired_children(fleet())]
    first_workload = min(kinds.index(k) for k in ("DaemonSet", "Deployment"))
    assert kinds.index("ServiceAccount") < first_workload
    assert max(i for i, k in enumerate(kinds) if k == "ServiceAccount") < first_workload


def test_fleet_token_mode_is_the_fleet_token_everywhere_and_no_kubernetes_identity(
    clean_env: pytest.MonkeyPatch,
) -> None:
    children = m.desired_children(fleet(FLEET_TOKEN))
    configmaps = {c["metadata"]["name"]: c["data"] for c in children if c["kind"] == "ConfigMap"}
    for pod, c in containers(children):
        assert token_files(pod) == {}, c["name"]
        assert pod["automountServiceAccountToken"] is False, c["name"]
        token = next(e for e in c["env"] if e["name"] == "SYSMON_TOKEN")
        assert token["valueFrom"]["secretKeyRef"] == BASE["token"]["secretKeyRef"]
    for data in configmaps.values():
        assert not [k for k in data if k.startswith("SYSMON_KUBE_") or k == "SYSMON_TOKEN_FILE"]
    load_env(clean_env, configmaps["prod-aggregator"])
    assert AggregatorSettings().kube_audience is None
    for settings_type, _, name in CLIENTS:
        load_env(clean_env, configmaps[name])
        assert settings_type().token_file is None


def test_the_aggregator_lists_only_the_service_accounts_that_exist() -> None:
    def data(f: m.Fleet) -> dict[str, str]:
        return by_key(m.desired_children(f))["ConfigMap", "prod-aggregator"]["data"]  # type: ignore[no-any-return]

    no_alerts = fleet({"alerts": {"enabled": False}})
    assert "SYSMON_KUBE_READERS" not in data(no_alerts)
    assert ("ServiceAccount", "prod-alerts") not in {m.key(c) for c in m.desired_children(no_alerts)}
    # An operator that does not know its ServiceAccount makes no admin (it falls back to the fleet token).
    assert "SYSMON_KUBE_ADMINS" not in data(fleet(operator_account=None))
    assert data(fleet(operator_account="ops/sysmon-operator"))["SYSMON_KUBE_ADMINS"] == "ops/sysmon-operator"


def test_the_audience_and_lifetime_reach_the_tokens_and_the_aggregator() -> None:
    f = fleet({"identity": {"audience": "https://sysmon.example.com", "tokenExpirationSeconds": 1800}})
    children = m.desired_children(f)
    for _, kind, name in CLIENTS:
        (source,) = token_files(pod_of(children, kind, name)).values()
        assert (source["audience"], source["expirationSeconds"]) == ("https://sysmon.example.com", 1800)
    assert by_key(children)["ConfigMap", "prod-aggregator"]["data"]["SYSMON_KUBE_AUDIENCE"] == \
        "https://sysmon.example.com"


@pytest.mark.parametrize(
    ("before", "after", "rolled"),
    [
        ({}, FLEET_TOKEN, ["prod-aggregator", "prod-alerts", "prod-collector"]),
        (FLEET_TOKEN, {}, ["prod-aggregator", "prod-alerts", "prod-collector"]),
        ({}, {"identity": {"audience": "sysmon.example.com"}}, ["prod-aggregator", "prod-alerts", "prod-collector"]),
        # Only the clients' tokens live longer; the aggregator reads the expiry from each token.
        ({}, {"identity": {"tokenExpirationSeconds": 7200}}, ["prod-alerts", "prod-collector"]),
        ({}, {"identity": {"mode": "serviceAccountToken"}}, []),
        (FLEET_TOKEN, {"identity": {"mode": "fleetToken", "audience": "other"}}, []),
    ],
)
def test_an_identity_change_rolls_exactly_the_pods_that_use_it(
    before: dict[str, Any], after: dict[str, Any], rolled: list[str]
) -> None:
    assert _rolled(fleet(before), fleet(after)) == rolled


# --- the bus ------------------------------------------------------------------------------------

KAFKA = {"bus": {"type": "kafka", "kafka": {
    "bootstrapServers": ["k-0.kafka:9093", "k-1.kafka:9093"], "partitions": 24, "replication": 3,
    "tls": {"caSecretRef": {"name": "kafka-ca", "key": "ca.crt"}, "clientSecretName": "sysmon-user",
            "clientCertKey": "user.crt", "clientKeyKey": "user.key"},
    "sasl": {"mechanism": "SCRAM-SHA-512", "username": "sysmon",
             "password": {"secretKeyRef": {"name": "kafka-pass", "key": "password"}}},
}}}


def test_on_the_redis_bus_one_alerts_replica_is_one_pod_replaced_never_doubled() -> None:
    children = by_key(m.desired_children(fleet()))
    alerts = children["Deployment", "prod-alerts"]["spec"]
    assert (alerts["replicas"], alerts["strategy"]) == (1, {"type": "Recreate"})
    assert ("PodDisruptionBudget", "prod-alerts") not in children
    assert not any(k.startswith("SYSMON_BUS_") for c in children.values() if c["kind"] == "ConfigMap"
                   for k in c["data"])
    env = {e["name"] for e in alerts["template"]["spec"]["containers"][0]["env"]}
    assert "SYSMON_CONSUMER" not in env  # the one consumer keeps its name across pods
    with pytest.raises(ValueError, match=r"bus\.type kafka needs bus\.kafka\.bootstrapServers"):
        fleet({"bus": {"type": "kafka"}})


def assert_alerts_replicas_share_hosts(children: dict[Any, Any], replicas: int) -> None:
    """N alerts pods rolled one at a time, each a consumer of its own name, a drain taking one at a time."""
    alerts = children["Deployment", "prod-alerts"]["spec"]
    assert alerts["replicas"] == replicas
    assert alerts["strategy"]["type"] == "RollingUpdate"
    env = {e["name"]: e for e in alerts["template"]["spec"]["containers"][0]["env"]}
    assert env["SYSMON_CONSUMER"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert children["PodDisruptionBudget", "prod-alerts"]["spec"]["maxUnavailable"] == 1


def test_on_the_redis_bus_alerts_replicas_share_the_samples_shards(clean_env: pytest.MonkeyPatch) -> None:
    children = by_key(m.desired_children(fleet({"alerts": {"replicas": 3}})))
    for child in children.values():
        assert manifest_errors(child) == [], m.key(child)
    assert_alerts_replicas_share_hosts(children, 3)
    # Every component on the bus splits (aggregator), follows (gateway) or leases (alerts) the same shards.
    for settings_type, name in ((AggregatorSettings, "prod-aggregator"), (GatewaySettings, "prod-gateway"),
                                (AlertsSettings, "prod-alerts")):
        load_env(clean_env, children["ConfigMap", name]["data"])
        s = settings_type()
        assert (s.bus_url, s.bus_redis_shards) == (None, m.REDIS_SHARDS)
    assert "SYSMON_BUS_REDIS_SHARDS" not in children["ConfigMap", "prod-collector"]["data"]


def test_on_kafka_every_bus_component_loads_the_brokers_tls_and_sasl(clean_env: pytest.MonkeyPatch) -> None:
    children = by_key(m.desired_children(fleet({**KAFKA, "alerts": {"replicas": 3}})))
    for child in children.values():
        assert manifest_errors(child) == [], m.key(child)
    for settings_type, name in ((AggregatorSettings, "prod-aggregator"), (GatewaySettings, "prod-gateway"),
                                (AlertsSettings, "prod-alerts")):
        load_env(clean_env, children["ConfigMap", name]["data"])
        pod = children["Deployment", name]["spec"]["template"]["spec"]
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        assert env["SYSMON_BUS_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "kafka-pass", "key": "password"}
        clean_env.setenv("SYSMON_BUS_SASL_PASSWORD", "from-the-secret")
        s = settings_type()
        assert s.bus_url == "kafka://k-0.kafka:9093,k-1.kafka:9093"
        assert (s.bus_partitions, s.bus_replication, s.bus_security()) == (24, 3, "SASL_SSL")
        (vol,) = [v for v in pod["volumes"] if v["name"] == m.KAFKA_TLS_VOLUME]
        files = {i["path"]: (src["secret"]["name"], i["key"]) for src in vol["projected"]["sources"]
                 for i in src["secret"]["items"]}
        assert files == {"ca.crt": ("kafka-ca", "ca.crt"), "client.crt": ("sysmon-user", "user.crt"),
                         "client.key": ("sysmon-user", "user.key")}
        mounts = {x["mountPath"] for x in pod["containers"][0]["volumeMounts"]}
        assert {str(p.parent) for p in (s.bus_tls_ca, s.bus_tls_cert, s.bus_tls_key)} <= mounts
    assert_alerts_replicas_share_hosts(children, 3)
    assert "SYSMON_BUS_URL" not in children["ConfigMap", "prod-collector"]["data"]


# --- the SQS exporter ------------------------------------------------------------------------------

QUEUE = "https://sqs.eu-west-1.amazonaws.com/123456789012/sysmon-pipeline"
ROLE = "arn:aws:iam::123456789012:role/sysmon-sqs-exporter"
SQS_IRSA = {"exporters": {"sqs": {"queueUrl": QUEUE, "serviceAccountRoleArn": ROLE}}}
SQS_SECRET = {"exporters": {"sqs": {
    "queueUrl": "http://localstack.aws.svc:4566/000000000000/sysmon-pipeline", "region": "us-east-1",
    "endpointUrl": "http://localstack.aws.svc:4566",
    "credentialsSecret": {"name": "sysmon-aws", "accessKeyIdKey": "id", "secretAccessKeyKey": "secret"},
    "messageBytes": 131072, "linger": "2s", "retryMax": "1m", "consumerGroup": "sqs-pipeline"}}}
SQS_MIN, SQS_MAX = 16 * 1024, 256 * 1024
SQS_CHILDREN = {("ServiceAccount", "prod-sqs-exporter"), ("ConfigMap", "prod-sqs-exporter"),
                ("Deployment", "prod-sqs-exporter")}


def exporter_settings(monkeypatch: pytest.MonkeyPatch, children: dict[tuple[str, str], Any]) -> Any:
    """What `sysmon export sqs` reads in that pod: its ConfigMap, and the Redis URL from its Secret."""
    from sysmon.pipeline.settings import SqsExporterSettings

    load_env(monkeypatch, children["ConfigMap", "prod-sqs-exporter"]["data"])
    monkeypatch.setenv("SYSMON_REDIS_URL", "redis://from-the-secret:6379/0")
    return SqsExporterSettings()


def test_no_exporter_unless_the_fleet_asks_yet_its_children_are_among_what_a_fleet_may_own() -> None:
    assert not SQS_CHILDREN & {m.key(c) for c in m.desired_children(fleet())}
    # So removing spec.exporters.sqs deletes them (the reconciler looks up every possible child).
    assert set(m.possible_children(fleet())) >= SQS_CHILDREN
    assert {m.key(c) for c in m.desired_children(fleet(SQS_IRSA))} >= SQS_CHILDREN


@pytest.mark.parametrize("spec", [SQS_IRSA, SQS_SECRET], ids=["irsa", "secret"])
def test_the_exporter_is_one_pod_of_sysmon_export_sqs_as_its_own_service_account(spec: dict[str, Any]) -> None:
    children = by_key(m.desired_children(fleet(spec)))
    for k in SQS_CHILDREN:
        assert manifest_errors(children[k]) == [], k
        assert children[k]["metadata"]["ownerReferences"][0]["uid"] == "0b5e-uid"
    deployment = children["Deployment", "prod-sqs-exporter"]["spec"]
    # One consumer name that survives restarts: never two pods of it at once.
    assert (deployment["replicas"], deployment["strategy"]) == (1, {"type": "Recreate"})
    pod = deployment["template"]["spec"]
    (c,) = pod["containers"]
    assert c["args"] == ["export", "sqs"]
    assert pod["serviceAccountName"] == "prod-sqs-exporter"
    # No Kubernetes API token: the exporter calls no Kubernetes API (IRSA's webhook mounts its own token).
    assert pod["automountServiceAccountToken"] is False
    assert children["ServiceAccount", "prod-sqs-exporter"]["automountServiceAccountToken"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/metrics", "port": 9466}
    assert c["ports"] == [{"name": "metrics", "containerPort": 9466, "protocol": "TCP"}]


def test_with_irsa_the_role_is_on_the_exporters_service_account_and_no_key_anywhere(
    clean_env: pytest.MonkeyPatch,
) -> None:
    children = by_key(m.desired_children(fleet(SQS_IRSA)))
    sa = children["ServiceAccount", "prod-sqs-exporter"]
    assert sa["metadata"]["annotations"][m.IRSA_ROLE_ANNOTATION] == ROLE
    # Only the exporter's ServiceAccount carries the role.
    others = [c for k, c in children.items() if k[0] == "ServiceAccount" and k[1] != "prod-sqs-exporter"]
    assert others
    assert all(m.IRSA_ROLE_ANNOTATION not in c["metadata"]["annotations"] for c in others)
    (c,) = children["Deployment", "prod-sqs-exporter"]["spec"]["template"]["spec"]["containers"]
    # Only the bus it reads: no database URL, no fleet token, no access key.
    assert c["env"] == [{"name": "SYSMON_REDIS_URL", "valueFrom": {"secretKeyRef": BASE["redis"]["secretKeyRef"]}}]
    s = exporter_settings(clean_env, children)
    assert s.queue_url == QUEUE
    assert s.region_name() == "eu-west-1"
    assert s.endpoint_url is None
    assert s.bus_url is None
    assert s.metrics_listen == "0.0.0.0:9466"
    assert (s.consumer_group, s.consumer) == ("sqs-exporter", "sqs-exporter-0")


def test_a_role_change_rewrites_the_service_account() -> None:
    """The annotation counts in the spec hash, so the reconciler sees the change as one."""
    other = {"exporters": {"sqs": {"queueUrl": QUEUE, "serviceAccountRoleArn": ROLE + "-2"}}}

    def sa(spec: dict[str, Any]) -> dict[str, Any]:
        return by_key(m.desired_children(fleet(spec)))["ServiceAccount", "prod-sqs-exporter"]

    assert sa(SQS_IRSA)["metadata"]["annotations"][m.SPEC_HASH] != sa(other)["metadata"]["annotations"][m.SPEC_HASH]
    assert m.IRSA_ROLE_ANNOTATION not in sa(SQS_SECRET)["metadata"]["annotations"]


def test_with_a_secret_the_access_key_comes_by_reference_and_the_settings_reach_the_exporter(
    clean_env: pytest.MonkeyPatch,
) -> None:
    children = by_key(m.desired_children(fleet(SQS_SECRET)))
    (c,) = children["Deployment", "prod-sqs-exporter"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in c["env"]}
    assert set(env) == {"SYSMON_REDIS_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"] == {"secretKeyRef": {"name": "sysmon-aws", "key": "id"}}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "sysmon-aws", "key": "secret"}}
    assert all("value" not in e for e in c["env"])
    data = children["ConfigMap", "prod-sqs-exporter"]["data"]
    assert not [k for k in data if k.startswith("AWS_") or "SECRET" in k or "TOKEN" in k]
    s = exporter_settings(clean_env, children)
    assert s.endpoint_url == "http://localstack.aws.svc:4566"
    assert s.region_name() == "us-east-1"
    assert (s.message_bytes, s.linger, s.retry_max) == (131072, timedelta(seconds=2), timedelta(minutes=1))
    assert s.consumer_group == "sqs-pipeline"


def test_the_exporters_limits_and_defaults_are_the_exporters_own() -> None:
    from sysmon.operator import fleet_spec
    from sysmon.pipeline import pack, wire
    from sysmon.pipeline.settings import SqsExporterSettings

    assert fleet_spec.SQS_MIN_MESSAGE_BYTES == pack.MIN_MESSAGE_BYTES == SQS_MIN
    assert fleet_spec.SQS_MAX_MESSAGE_BYTES == wire.MAX_MESSAGE_BYTES == SQS_MAX
    spec = FleetSpec.model_validate({**BASE, **SQS_IRSA}).exporters.sqs
    assert spec is not None
    defaults = SqsExporterSettings.model_fields
    for name in ("consumer_group", "message_bytes", "linger", "retry_max"):
        assert getattr(spec, name) == defaults[name].default, name
    # The same bounds: what the CRD lets through, the exporter takes.
    sqs = SQS_IRSA["exporters"]["sqs"]
    for linger, ok in (("60s", True), ("61s", False)):
        assert model_ok(FleetSpec, {**BASE, "exporters": {"sqs": {**sqs, "linger": linger}}}) is ok
        assert model_ok(SqsExporterSettings, {"queue_url": QUEUE, "linger": linger}) is ok
    for size, ok in ((SQS_MIN, True), (SQS_MIN - 1, False), (SQS_MAX, True), (SQS_MAX + 1, False)):
        assert model_ok(FleetSpec, {**BASE, "exporters": {"sqs": {**sqs, "messageBytes": size}}}) is ok
        assert model_ok(SqsExporterSettings, {"queue_url": QUEUE, "message_bytes": size}) is ok


def model_ok(model: Any, data: dict[str, Any]) -> bool:
    from pydantic import ValidationError

    try:
        model.model_validate(data)
    except ValidationError:
        return False
    return True


def test_the_exporter_is_refused_on_the_kafka_bus() -> None:
    with pytest.raises(ValueError, match=r"exporters\.sqs reads the Redis bus only: it cannot forward from bus\.type "
                                         r"kafka"):
        fleet({**KAFKA, **SQS_IRSA})


def test_the_exporter_is_refused_beside_alerts_replicas_on_redis_shards() -> None:
    with pytest.raises(ValueError, match=r"exporters\.sqs reads the one Redis samples stream"):
        fleet({"alerts": {"replicas": 2}, **SQS_IRSA})


def test_an_exporter_change_rolls_the_exporter_alone() -> None:
    before, after = _templates(fleet()), _templates(fleet(SQS_IRSA))
    assert {k: v for k, v in after.items() if k in before} == before, "adding it restarts nothing else"
    linger = {"exporters": {"sqs": {**SQS_IRSA["exporters"]["sqs"], "linger": "2s"}}}
    assert _rolled(fleet(SQS_IRSA), fleet(linger)) == ["prod-sqs-exporter"]
