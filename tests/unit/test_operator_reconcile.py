"""The MonitoredFleet handler, called as kopf calls it, against an in-memory API server:
children created, a spec change writes only what changes, drift is undone, disabled components are
deleted, and the status (conditions, counts, observedGeneration) says what is true."""

from __future__ import annotations

import logging
from typing import Any

import kopf
import pytest

from sysmon.core.settings import OperatorSettings
from sysmon.operator import handlers
from sysmon.operator.config_client import ConfigClient
from sysmon.operator.handlers import OperatorContext, fleet_reconcile
from sysmon.operator.kube import KubeError
from sysmon.operator.manifests import SPEC_HASH
from sysmon.operator.settings import OperatorIdentity
from tests.fake_kube import FakeKube
from tests.k8s_schemas import schema_of, to_json_schema

NS = "monitoring"
SECRETS = {
    "postgres": {"secretKeyRef": {"name": "sysmon-postgres", "key": "url"}},
    "redis": {"secretKeyRef": {"name": "sysmon-redis", "key": "url"}},
    "token": {"secretKeyRef": {"name": "sysmon-token", "key": "token"}},
}
ALL = 14  # 3 ServiceAccounts, 4 ConfigMaps, DaemonSet, 3 Deployments, 3 Services


class Fleet:
    """One MonitoredFleet object as kopf hands it to handlers; status is kept as kopf would patch it."""

    def __init__(self, kube: FakeKube, spec: dict[str, Any] | None = None,
                 identity: OperatorIdentity | None = None):
        self.kube = kube
        self.spec = {**SECRETS, **(spec or {})}
        self.generation = 1
        self.status: dict[str, Any] = {}
        settings = OperatorSettings(namespace=NS, image="sysmon:test")
        ctx = OperatorContext(settings, kube, ConfigClient(settings), now=lambda: self.clock)
        if identity is not None:
            ctx.identity = identity
        self.memo = kopf.Memo(ctx=ctx)
        self.clock = "2025-01-01T00:00:00Z"

    def change(self, **spec: Any) -> None:
        self.spec.update(spec)
        self.generation += 1

    def reconcile(self, retry: int = 0) -> list[tuple[str, str, str]]:
        """Run the handler once; return the writes it made."""
        start = len(self.kube.writes)
        patch = kopf.Patch()
        try:
            fleet_reconcile(name="prod", namespace=NS, uid="fleet-uid", meta={"generation": self.generation},
                            spec=self.spec, status=self.status, patch=patch, memo=self.memo,
                            logger=logging.getLogger("test"), retry=retry)
        finally:
            for k, v in patch.status.items():
                if v is None:
                    self.status.pop(k, None)
                else:
                    self.status[k] = v
        return self.kube.writes[start:]

    def condition(self, type_: str) -> dict[str, Any]:
        return next(c for c in self.status["conditions"] if c["type"] == type_)


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


def test_a_new_fleet_gets_every_child_and_reports_progress_until_ready(kube: FakeKube) -> None:
    fleet = Fleet(kube)
    writes = fleet.reconcile()
    assert len(writes) == ALL
    assert all(verb == "apply" for verb, _, _ in writes)
    # ServiceAccounts and ConfigMaps first: pods never start without the identity and variables they need.
    assert [kind for _, kind, _ in writes[:7]] == ["ServiceAccount"] * 3 + ["ConfigMap"] * 4
    assert fleet.status["observedGeneration"] == 1
    assert fleet.condition("Ready")["status"] == "False"
    assert fleet.condition("Progressing")["status"] == "True"
    assert fleet.condition("Degraded")["status"] == "False"

    kube.roll_out(NS, nodes=3)
    fleet.clock = "2025-01-01T00:01:00Z"
    assert fleet.reconcile() == [], "nothing changed: nothing written"
    assert fleet.status["collectors"] == {"desired": 3, "ready": 3, "updated": 3}
    assert fleet.status["aggregator"] == {"desired": 1, "ready": 1, "updated": 1}
    ready = fleet.condition("Ready")
    assert ready["status"] == "True"
    assert ready["reason"] == "AllComponentsReady"
    assert ready["lastTransitionTime"] == "2025-01-01T00:01:00Z"
    assert fleet.condition("Progressing")["status"] == "False"

    # Conditions keep their transition time while they hold.
    fleet.clock = "2025-01-01T00:02:00Z"
    fleet.reconcile()
    assert fleet.condition("Ready")["lastTransitionTime"] == "2025-01-01T00:01:00Z"


def test_the_status_fits_the_crds_status_schema(kube: FakeKube) -> None:
    import jsonschema

    fleet = Fleet(kube)
    fleet.reconcile()
    kube.roll_out(NS)
    fleet.reconcile()
    jsonschema.validate(fleet.status, to_json_schema(schema_of("MonitoredFleet")["properties"]["status"], False))


def test_a_spec_change_rewrites_only_what_it_changes(kube: FakeKube) -> None:
    fleet = Fleet(kube)
    fleet.reconcile()
    kube.roll_out(NS)
    aggregator_generation = kube.get("Deployment", NS, "prod-aggregator")["metadata"]["generation"]

    fleet.change(interval="15s")
    assert sorted(fleet.reconcile()) == [("apply", "ConfigMap", "prod-collector"),
                                         ("apply", "DaemonSet", "prod-collector")]
    assert kube.get("Deployment", NS, "prod-aggregator")["metadata"]["generation"] == aggregator_generation
    assert fleet.status["observedGeneration"] == 2
    # The DaemonSet controller has not caught up yet: the fleet is rolling out.
    assert fleet.condition("Progressing")["status"] == "True"
    assert "collector" in fleet.condition("Progressing")["message"]

    fleet.change(aggregator={"replicas": 3})
    assert fleet.reconcile() == [("apply", "Deployment", "prod-aggregator")]
    assert kube.get("Deployment", NS, "prod-aggregator")["spec"]["replicas"] == 3


def test_turning_tls_on_rewrites_the_aggregator_and_its_clients_never_the_gateway(kube: FakeKube) -> None:
    fleet = Fleet(kube)
    fleet.reconcile()
    kube.roll_out(NS)
    fleet.change(tls={"secretName": "prod-aggregator-tls"})
    assert sorted(fleet.reconcile()) == [
        ("apply", "ConfigMap", "prod-aggregator"), ("apply", "ConfigMap", "prod-alerts"),
        ("apply", "ConfigMap", "prod-collector"), ("apply", "DaemonSet", "prod-collector"),
        ("apply", "Deployment", "prod-aggregator"), ("apply", "Deployment", "prod-alerts"),
    ]
    # Once applied, the Secret volume (its mode, items) reads back as written: nothing to do.
    assert fleet.reconcile() == []
    fleet.change(gateway={"externalURL": "https://sysmon.example.com"})
    assert sorted(fleet.reconcile()) == [("apply", "ConfigMap", "prod-alerts"), ("apply", "Deployment", "prod-alerts")]


def test_quantities_the_server_rewrites_are_not_mistaken_for_changes(kube: FakeKube) -> None:
    fleet = Fleet(kube, {"aggregator": {"resources": {"requests": {"cpu": "0.25"}, "limits": {"memory": "2048Mi"}}}})
    fleet.reconcile()
    live = kube.get("Deployment", NS, "prod-aggregator")["spec"]["template"]["spec"]["containers"][0]
    assert live["resources"] == {"requests": {"cpu": "250m"}, "limits": {"memory": "2Gi"}}
    assert fleet.reconcile() == []


def test_drift_is_corrected_and_deleted_children_come_back(kube: FakeKube) -> None:
    fleet = Fleet(kube)
    fleet.reconcile()

    def swap_image(obj: dict[str, Any]) -> None:
        obj["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:latest"

    kube.edit("Deployment", NS, "prod-aggregator", swap_image)
    assert fleet.reconcile() == [("apply", "Deployment", "prod-aggregator")]
    live = kube.get("Deployment", NS, "prod-aggregator")
    assert live["spec"]["template"]["spec"]["containers"][0]["image"] == "sysmon:test"

    kube.remove("Service", NS, "prod-aggregator")
    kube.remove("ConfigMap", NS, "prod-alerts")
    assert sorted(fleet.reconcile()) == [("apply", "ConfigMap", "prod-alerts"), ("apply", "Service", "prod-aggregator")]

    # A hand edit that also fakes the spec hash is still found by comparing the fields.
    def scale(obj: dict[str, Any]) -> None:
        obj["spec"]["replicas"] = 0

    kube.edit("Deployment", NS, "prod-gateway", scale)
    assert kube.get("Deployment", NS, "prod-gateway")["metadata"]["annotations"][SPEC_HASH]
    assert fleet.reconcile() == [("apply", "Deployment", "prod-gateway")]


def test_disabling_a_component_deletes_what_the_fleet_owns_of_it(kube: FakeKube) -> None:
    fleet = Fleet(kube)
    fleet.reconcile()
    kube.roll_out(NS)
    fleet.reconcile()
    assert "gateway" in fleet.status

    fleet.change(gateway={"enabled": False})
    assert sorted(fleet.reconcile()) == [("delete", "ConfigMap", "prod-gateway"),
                                         ("delete", "Deployment", "prod-gateway"),
                                         ("delete", "Service", "prod-gateway")]
    assert "gateway" not in fleet.status
    assert fleet.condition("Ready")["status"] == "True"


def test_an_object_someone_else_owns_is_left_alone_and_reported(kube: FakeKube) -> None:
    kube.apply({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "prod-gateway", "namespace": NS}, "spec": {"ports": []}})
    fleet = Fleet(kube)
    with pytest.raises(kopf.TemporaryError):
        fleet.reconcile()
    assert ("apply", "Service", "prod-gateway") not in kube.writes[1:]
    degraded = fleet.condition("Degraded")
    assert degraded["status"] == "True"
    assert degraded["reason"] == "Conflict"
    assert "Service prod-gateway exists and is not owned by this fleet" in degraded["message"]


def test_an_invalid_spec_is_reported_not_applied(kube: FakeKube) -> None:
    # The CRD refuses this at kubectl apply; an object stored before the schema said so reaches the operator.
    fleet = Fleet(kube, {"metricGroups": ["cpu", "gpu"]})
    with pytest.raises(kopf.PermanentError):
        fleet.reconcile()
    assert kube.writes == []
    degraded = fleet.condition("Degraded")
    assert degraded["reason"] == "InvalidSpec"
    assert "spec.metricGroups" in degraded["message"]
    assert "gpu" in degraded["message"]


def test_api_errors_are_retried_with_backoff_and_shown(kube: FakeKube) -> None:
    fleet = Fleet(kube)
    kube.fail_next = KubeError("patch DaemonSet: 503 Service Unavailable", retryable=True)
    with pytest.raises(kopf.TemporaryError) as e:
        fleet.reconcile(retry=3)
    assert 8 * 0.8 <= e.value.delay <= 8 * 1.2
    assert fleet.condition("Degraded")["reason"] == "ApplyFailed"
    assert "503" in fleet.condition("Degraded")["message"]

    kube.fail_next = KubeError("forbidden: cannot patch daemonsets", retryable=False)
    with pytest.raises(kopf.PermanentError):
        fleet.reconcile()
    # The next attempt (the timer's) goes through.
    assert len(fleet.reconcile()) == ALL
    assert fleet.condition("Degraded")["status"] == "False"


def test_handlers_are_registered_for_every_cause() -> None:
    registry = handlers.register(kopf.OperatorRegistry(), OperatorSettings(namespace=NS))
    changing = registry._changing.get_all_handlers()
    by_fn: dict[str, set[str]] = {}
    for h in changing:
        by_fn.setdefault(h.fn.__name__, set()).add(str(h.reason) if h.reason else "?")
    assert set(by_fn) == {"fleet_reconcile", "rule_push", "rule_remove"}
    assert len(by_fn["fleet_reconcile"]) == 3  # create, update, resume
    timers = registry._spawning.get_all_handlers()
    assert [(t.fn.__name__, t.interval) for t in timers] == [("fleet_reconcile", 20.0)]


# --- identity ------------------------------------------------------------------------------------


def _env(kube: FakeKube, configmap: str) -> dict[str, str]:
    return kube.get("ConfigMap", NS, configmap)["data"]  # type: ignore[no-any-return]


def _pod(kube: FakeKube, kind: str, name: str) -> dict[str, Any]:
    return kube.get(kind, NS, name)["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def test_the_aggregator_takes_the_operators_own_service_account_as_admin(kube: FakeKube) -> None:
    fleet = Fleet(kube, identity=OperatorIdentity(service_account="ops-operator"))
    fleet.reconcile()
    env = _env(kube, "prod-aggregator")
    assert env["SYSMON_KUBE_ADMINS"] == f"{NS}/ops-operator"
    assert env["SYSMON_KUBE_COLLECTORS"] == f"{NS}/prod-collector"
    assert env["SYSMON_KUBE_READERS"] == f"{NS}/prod-alerts"
    # Every pod runs as a ServiceAccount the reconcile created (and the fleet owns).
    for kind, name in (("DaemonSet", "prod-collector"), ("Deployment", "prod-aggregator"),
                       ("Deployment", "prod-alerts")):
        sa = kube.get("ServiceAccount", NS, _pod(kube, kind, name)["serviceAccountName"])
        assert sa is not None, name
        assert sa["metadata"]["ownerReferences"][0]["uid"] == "fleet-uid"


def test_the_operators_service_account_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYSMON_SERVICE_ACCOUNT", "sysmon-operator-2")
    assert OperatorIdentity().principal(NS) == f"{NS}/sysmon-operator-2"
    monkeypatch.delenv("SYSMON_SERVICE_ACCOUNT")
    assert OperatorIdentity().principal(NS) == f"{NS}/sysmon-operator"
    monkeypatch.setenv("SYSMON_SERVICE_ACCOUNT", "Not A Name")
    with pytest.raises(ValueError, match="service_account"):
        OperatorIdentity()


def test_switching_to_the_fleet_token_rewrites_the_clients_and_the_aggregator_and_nothing_else(kube: FakeKube) -> None:
    fleet = Fleet(kube)
    fleet.reconcile()
    kube.roll_out(NS)
    assert fleet.reconcile() == [], "projected volumes and ServiceAccounts read back as written"
    assert "SYSMON_TOKEN_FILE" in _env(kube, "prod-collector")

    fleet.change(identity={"mode": "fleetToken"})
    assert sorted(fleet.reconcile()) == [
        ("apply", "ConfigMap", "prod-aggregator"), ("apply", "ConfigMap", "prod-alerts"),
        ("apply", "ConfigMap", "prod-collector"), ("apply", "DaemonSet", "prod-collector"),
        ("apply", "Deployment", "prod-aggregator"), ("apply", "Deployment", "prod-alerts"),
    ]
    assert "SYSMON_TOKEN_FILE" not in _env(kube, "prod-collector")
    assert not [k for k in _env(kube, "prod-aggregator") if k.startswith("SYSMON_KUBE_")]
    (collector,) = _pod(kube, "DaemonSet", "prod-collector")["containers"]
    assert "SYSMON_TOKEN" in {e["name"] for e in collector["env"]}
    assert not [v for v in _pod(kube, "DaemonSet", "prod-collector")["volumes"] if "projected" in v]
    assert _pod(kube, "Deployment", "prod-aggregator")["automountServiceAccountToken"] is False
    # The ServiceAccounts stay: the pods still run as them.
    assert kube.get("ServiceAccount", NS, "prod-collector") is not None
    assert fleet.reconcile() == []


def test_disabling_alerts_drops_its_service_account_and_its_reader_grant(kube: FakeKube) -> None:
    fleet = Fleet(kube)
    fleet.reconcile()
    fleet.change(alerts={"enabled": False})
    assert sorted(fleet.reconcile()) == [
        ("apply", "ConfigMap", "prod-aggregator"), ("apply", "Deployment", "prod-aggregator"),
        ("delete", "ConfigMap", "prod-alerts"), ("delete", "Deployment", "prod-alerts"),
        ("delete", "Service", "prod-alerts"), ("delete", "ServiceAccount", "prod-alerts"),
    ]
    assert "SYSMON_KUBE_READERS" not in _env(kube, "prod-aggregator")


def test_a_service_account_someone_else_made_is_not_taken_over(kube: FakeKube) -> None:
    """A ServiceAccount of that name (perhaps bound to roles) stays as it is, and the fleet says why."""
    kube.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "prod-aggregator", "namespace": NS}})
    fleet = Fleet(kube)
    with pytest.raises(kopf.TemporaryError):
        fleet.reconcile()
    assert "ownerReferences" not in kube.get("ServiceAccount", NS, "prod-aggregator")["metadata"]
    degraded = fleet.condition("Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "Conflict")
    assert "ServiceAccount prod-aggregator exists and is not owned by this fleet" in degraded["message"]


# --- the SQS exporter ----------------------------------------------------------------------------

SQS = {"sqs": {"queueUrl": "https://sqs.eu-west-1.amazonaws.com/123456789012/sysmon-pipeline",
               "serviceAccountRoleArn": "arn:aws:iam::123456789012:role/sysmon-sqs-exporter"}}
EXPORTER = [("apply", "ServiceAccount", "prod-sqs-exporter"), ("apply", "ConfigMap", "prod-sqs-exporter"),
            ("apply", "Deployment", "prod-sqs-exporter")]


def test_the_sqs_exporter_comes_with_its_spec_and_goes_without_it(kube: FakeKube) -> None:
    import jsonschema

    fleet = Fleet(kube)
    fleet.reconcile()
    kube.roll_out(NS)
    fleet.reconcile()

    fleet.change(exporters=SQS)
    # Its own three objects, and nothing of the rest rewritten.
    assert fleet.reconcile() == EXPORTER
    assert kube.get("ServiceAccount", NS, "prod-sqs-exporter")["metadata"]["annotations"][
        "eks.amazonaws.com/role-arn"] == SQS["sqs"]["serviceAccountRoleArn"]
    assert fleet.condition("Progressing")["status"] == "True"
    assert "sqs-exporter 0/1 ready" in fleet.condition("Progressing")["message"]
    kube.roll_out(NS)
    assert fleet.reconcile() == [], "what was applied reads back as written"
    assert fleet.status["sqsExporter"] == {"desired": 1, "ready": 1, "updated": 1}
    assert fleet.condition("Ready")["status"] == "True"
    jsonschema.validate(fleet.status, to_json_schema(schema_of("MonitoredFleet")["properties"]["status"], False))

    fleet.change(exporters={})
    assert sorted(fleet.reconcile()) == [("delete", "ConfigMap", "prod-sqs-exporter"),
                                         ("delete", "Deployment", "prod-sqs-exporter"),
                                         ("delete", "ServiceAccount", "prod-sqs-exporter")]
    assert "sqsExporter" not in fleet.status
    assert fleet.condition("Ready")["status"] == "True"


def test_the_sqs_exporter_on_the_kafka_bus_is_refused_and_says_why(kube: FakeKube) -> None:
    """The CRD refuses it at kubectl apply; a fleet stored before (or a schema not yet updated) reaches the operator."""
    fleet = Fleet(kube, {"bus": {"type": "kafka", "kafka": {"bootstrapServers": ["kafka-0.kafka:9093"]}},
                         "exporters": SQS})
    with pytest.raises(kopf.PermanentError, match=r"exporters\.sqs reads the Redis bus only"):
        fleet.reconcile()
    assert kube.writes == []
    degraded = fleet.condition("Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "InvalidSpec")
    assert degraded["message"] == "spec: exporters.sqs reads the Redis bus only: it cannot forward from bus.type kafka"


def test_a_bad_queue_url_is_reported_at_its_field(kube: FakeKube) -> None:
    fleet = Fleet(kube, {"exporters": {"sqs": {"queueUrl": "https://sqs.eu-west-1.amazonaws.com/sysmon-pipeline"}}})
    with pytest.raises(kopf.PermanentError):
        fleet.reconcile()
    assert kube.writes == []
    message = fleet.condition("Degraded")["message"]
    assert message.startswith("spec.exporters.sqs.queueUrl: String should match pattern"), message
