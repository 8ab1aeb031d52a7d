"""The CRDs: valid CustomResourceDefinitions, structural, with CEL rules that compile; every example
accepted and every bad example refused for the reason it states; and the schemas agree with the
models the operator and the aggregator validate with (AlertRuleSpec, FleetSpec)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from sysmon.core.alert_rule import AlertRuleSpec
from sysmon.core.durations import parse_duration
from sysmon.operator.fleet_spec import FleetSpec
from tests.k8s_schemas import (
    EXAMPLES,
    builtin_errors,
    cel_rules,
    compile_rule,
    crds,
    custom_resource_errors,
    load_docs,
    schema_of,
    structural_problems,
)

MODELS: dict[str, type[BaseModel]] = {"AlertRule": AlertRuleSpec, "MonitoredFleet": FleetSpec}
GOOD = sorted(EXAMPLES.glob("*.yaml"))
BAD = sorted((EXAMPLES / "bad").glob("*.yaml"))

# Each bad example, and what the API server's answer must mention.
WHY_BAD = {
    "monitoredfleet-negative-interval.yaml": ".spec.interval: '-5s' does not match",
    "monitoredfleet-interval-too-long.yaml": "interval must be between 100ms and 1h",
    "monitoredfleet-unknown-group.yaml": "'gpu' is not one of",
    "monitoredfleet-no-token.yaml": "'token' is a required property",
    "monitoredfleet-zero-replicas.yaml": "0 is less than the minimum of 1",
    "monitoredfleet-bad-quantity.yaml": "'lots' does not match",
    "monitoredfleet-tls-no-secret.yaml": "'secretName' is a required property",
    "monitoredfleet-tls-bad-secret-name.yaml": "'aggregator..tls' does not match",
    "monitoredfleet-external-url-credentials.yaml": "does not match '^https?://[^/@ ]+",
    "monitoredfleet-identity-unknown-mode.yaml": "'clientCertificate' is not one of",
    "monitoredfleet-identity-short-lived-token.yaml": "60 is less than the minimum of 600",
    "monitoredfleet-identity-api-server-audience.yaml": "the audience must not be the Kubernetes API server's",
    "monitoredfleet-sqs-bad-queue-url.yaml": "'https://console.aws.amazon.com/sqs/v3/home?region=eu-west-1#/queues' "
                                             "does not match",
    "monitoredfleet-sqs-on-kafka.yaml": "exporters.sqs reads the Redis bus only",
    "alertrule-unknown-op.yaml": "'=>' is not one of",
    "alertrule-resolve-above-threshold.yaml": "resolveThreshold must not be above the threshold",
    "alertrule-window-too-long.yaml": "window must be more than 0 and at most 1h",
    "alertrule-two-kinds-in-one-action.yaml": "has too many properties",
    "alertrule-credentials-in-url.yaml": "does not match '^https?://[^/@ ]+",
    "alertrule-misspelt-field.yaml": "'thresold' was unexpected",
    "alertrule-repeat-storm.yaml": "repeatInterval must be 0 (never) or at least 10s",
}


def one(path: Path) -> dict[str, Any]:
    (doc,) = load_docs(path)
    return doc


def model_accepts(model: type[BaseModel], spec: dict[str, Any]) -> bool:
    try:
        model.model_validate(spec)
    except ValidationError:
        return False
    return True


REF = {"secretKeyRef": {"name": "s", "key": "k"}}


def fleet_doc(**spec: Any) -> dict[str, Any]:
    """A MonitoredFleet with the required secrets and `spec` on top."""
    return {"apiVersion": "sysmon.dev/v1alpha1", "kind": "MonitoredFleet", "metadata": {"name": "f"},
            "spec": {"postgres": REF, "redis": REF, "token": REF, **spec}}


def test_both_crds_and_the_peering_crd_are_there() -> None:
    assert set(crds()) == {"MonitoredFleet", "AlertRule", "KopfPeering"}
    for kind in ("MonitoredFleet", "AlertRule"):
        spec = crds()[kind]["spec"]
        assert spec["group"] == "sysmon.dev"
        assert [v["name"] for v in spec["versions"]] == ["v1alpha1"]
        assert spec["versions"][0]["subresources"] == {"status": {}}
        assert spec["names"]["shortNames"], kind
        assert spec["names"]["categories"] == ["sysmon"]


@pytest.mark.parametrize("kind", ["MonitoredFleet", "AlertRule", "KopfPeering"])
def test_crd_is_a_valid_apiextensions_object(kind: str) -> None:
    assert builtin_errors(crds()[kind]) == []


@pytest.mark.parametrize("kind", ["MonitoredFleet", "AlertRule", "KopfPeering"])
def test_crd_schema_is_structural(kind: str) -> None:
    assert structural_problems(schema_of(kind)) == []


def test_the_structural_check_catches_what_the_api_server_refuses() -> None:
    # The checker itself: a schema with no type, and properties + additionalProperties, are not structural.
    bad = {"type": "object", "properties": {"a": {"description": "untyped"},
                                            "b": {"type": "object", "properties": {}, "additionalProperties": {}}}}
    problems = structural_problems(bad)
    assert ".a: no type" in problems
    assert ".b: properties and additionalProperties together" in problems


@pytest.mark.parametrize("kind", ["MonitoredFleet", "AlertRule"])
def test_every_cel_rule_compiles(kind: str) -> None:
    rules = list(cel_rules(schema_of(kind)))
    assert rules, "CEL rules say what the schema cannot"
    for path, rule in rules:
        assert compile_rule(rule) is not None, path


@pytest.mark.parametrize("kind", ["MonitoredFleet", "AlertRule"])
def test_printer_columns_name_fields_of_the_schema(kind: str) -> None:
    schema = schema_of(kind)
    (version,) = crds()[kind]["spec"]["versions"]
    for column in version["additionalPrinterColumns"]:
        path = column["jsonPath"].lstrip(".").split("[")[0].split(".")
        node = schema
        for part in path:
            if part == "metadata":
                break
            assert part in node.get("properties", {}), column
            node = node["properties"][part]


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.name)
def test_good_example_is_accepted_by_the_crd(path: Path) -> None:
    assert custom_resource_errors(one(path)) == []


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.name)
def test_bad_example_is_rejected_by_the_crd_for_its_reason(path: Path) -> None:
    errors = custom_resource_errors(one(path))
    assert errors, f"{path.name} was accepted"
    assert any(WHY_BAD[path.name] in e for e in errors), errors


def test_every_bad_example_has_a_stated_reason() -> None:
    assert {p.name for p in BAD} == set(WHY_BAD)
    assert len(GOOD) >= 4


@pytest.mark.parametrize("path", GOOD + BAD, ids=lambda p: p.name)
def test_the_crd_and_the_model_agree(path: Path) -> None:
    """Whatever `kubectl apply` accepts, the operator (and ConfigService.Apply) accepts, and the other way round."""
    doc = one(path)
    assert model_accepts(MODELS[doc["kind"]], doc["spec"]) == (custom_resource_errors(doc) == []), path.name


def _aliases(model: type[BaseModel]) -> set[str]:
    return {f.alias or name for name, f in model.model_fields.items()}


def _model_of(annotation: Any) -> type[BaseModel] | None:
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        inner = _model_of(arg)
        if inner is not None:
            return inner
    return None


def _compare_fields(schema: dict[str, Any], model: type[BaseModel], path: str) -> list[str]:
    out = []
    props = schema.get("properties") or {}
    if set(props) != _aliases(model):
        out.append(f"{path}: CRD {sorted(props)} vs model {sorted(_aliases(model))}")
    for name, field in model.model_fields.items():
        sub_model = _model_of(field.annotation)
        sub_schema = props.get(field.alias or name)
        if sub_model is None or sub_schema is None:
            continue
        if sub_schema.get("type") == "array":
            sub_schema = sub_schema["items"]
        out += _compare_fields(sub_schema, sub_model, f"{path}.{field.alias or name}")
    return out


@pytest.mark.parametrize("kind", ["MonitoredFleet", "AlertRule"])
def test_the_crd_has_exactly_the_fields_of_the_model(kind: str) -> None:
    """A field added to AlertRuleSpec (or FleetSpec) without the CRD, or the other way round, fails here."""
    assert _compare_fields(schema_of(kind)["properties"]["spec"], MODELS[kind], "spec") == []


def test_crd_defaults_are_the_model_defaults() -> None:
    rule = schema_of("AlertRule")["properties"]["spec"]["properties"]
    model = AlertRuleSpec.model_validate({"metric": "m", "condition": {"op": ">", "threshold": 1}})
    assert rule["aggregation"]["default"] == model.aggregation
    assert parse_duration(rule["window"]["default"]) == model.window
    assert parse_duration(rule["for"]["default"]) == model.for_
    assert rule["severity"]["default"] == model.severity
    assert parse_duration(rule["repeatInterval"]["default"]) == model.repeat_interval

    fleet = schema_of("MonitoredFleet")["properties"]["spec"]["properties"]
    f = FleetSpec.model_validate(fleet_doc()["spec"])
    assert parse_duration(fleet["interval"]["default"]) == f.interval
    assert fleet["imagePullPolicy"]["default"] == f.image_pull_policy
    assert fleet["readOnlyRootFilesystem"]["default"] is f.read_only_root_filesystem
    assert fleet["aggregator"]["properties"]["replicas"]["default"] == f.aggregator.replicas
    assert fleet["gateway"]["properties"]["enabled"]["default"] is f.gateway.enabled
    assert fleet["metricGroups"]["items"]["enum"] == f.metric_groups
    # Optional blocks: absent means off (no TLS, the alerts service's own external URL).
    assert f.tls is None
    assert "default" not in fleet["tls"]
    assert f.gateway.external_url is None
    assert "default" not in fleet["gateway"]["properties"]["externalURL"]
    tls = FleetSpec.model_validate(fleet_doc(tls={"secretName": "t"})["spec"]).tls
    assert tls is not None
    assert fleet["tls"]["properties"]["mutual"]["default"] is tls.mutual
    # Identity: on unless said otherwise, and `kubectl get -o yaml` shows it (the block defaults to {}).
    identity = fleet["identity"]["properties"]
    assert f.identity.mode == identity["mode"]["default"] == "serviceAccountToken"
    assert f.identity.audience == identity["audience"]["default"] == "sysmon.dev"
    assert f.identity.token_expiration_seconds == identity["tokenExpirationSeconds"]["default"] == 3600
    assert fleet["identity"]["default"] == {}


@pytest.mark.parametrize(
    ("name", "ok"),
    [("aggregator-tls", True), ("a", True), ("sysmon.aggregator-tls", True), ("a" * 253, True),
     ("a" * 254, False), ("Aggregator-tls", False), ("aggregator_tls", False), ("-tls", False), ("tls-", False),
     ("a..b", False), ("a.-b", False), (".a", False), ("", False)],
)
def test_tls_secret_and_server_names_are_dns_1123_subdomains_in_both(name: str, ok: bool) -> None:
    for field in ("secretName", "serverName"):
        doc = fleet_doc(tls={"secretName": "t", field: name})
        assert (custom_resource_errors(doc) == []) is ok, (field, name)
        assert model_accepts(FleetSpec, doc["spec"]) is ok, (field, name)


@pytest.mark.parametrize(
    ("condition", "ok"),
    [
        ({"op": ">", "threshold": 0.9, "resolveThreshold": 0.85}, True),
        ({"op": ">=", "threshold": 1, "resolveThreshold": 1}, True),
        ({"op": "<", "threshold": 0.1, "resolveThreshold": 0.2}, True),
        ({"op": "<", "threshold": 0.1, "resolveThreshold": 0.05}, False),
        ({"op": "==", "threshold": 3, "resolveThreshold": 3}, True),
        ({"op": "!=", "threshold": 3, "resolveThreshold": 4}, False),
        ({"op": "!=", "threshold": 3}, True),
    ],
)
def test_hysteresis_rule_is_the_models(condition: dict[str, Any], ok: bool) -> None:
    doc = {"apiVersion": "sysmon.dev/v1alpha1", "kind": "AlertRule", "metadata": {"name": "h"},
           "spec": {"metric": "system.cpu.utilization", "condition": condition}}
    assert (custom_resource_errors(doc) == []) is ok
    assert model_accepts(AlertRuleSpec, doc["spec"]) is ok


@pytest.mark.parametrize(
    ("url", "ok"),
    [("https://sysmon.example.com", True), ("http://sysmon-gateway.sysmon.svc:8080/", True),
     ("https://example.com/sysmon/?tab=alerts", True), ("ftp://sysmon.example.com", False),
     ("javascript:alert(1)", False), ("https://user:pw@example.com", False), ("https://a b.com", False),
     ("https://", False)],
)
def test_external_url_is_the_same_rule_in_both(url: str, ok: bool) -> None:
    doc = fleet_doc(gateway={"externalURL": url})
    assert (custom_resource_errors(doc) == []) is ok
    assert model_accepts(FleetSpec, doc["spec"]) is ok


def test_a_fleet_without_identity_is_stored_in_service_account_token_mode() -> None:
    """What the API server stores (and shows) for a fleet written before identity existed."""
    from tests.k8s_schemas import apply_defaults

    stored = apply_defaults(schema_of("MonitoredFleet"), fleet_doc())
    assert stored["spec"]["identity"] == {"mode": "serviceAccountToken", "audience": "sysmon.dev",
                                          "tokenExpirationSeconds": 3600}
    assert FleetSpec.model_validate(stored["spec"]).identity == FleetSpec.model_validate(fleet_doc()["spec"]).identity


@pytest.mark.parametrize(
    ("identity", "ok"),
    [({"mode": "fleetToken"}, True), ({"mode": "serviceAccountToken", "audience": "https://sysmon.example.com"}, True),
     ({"audience": "sysmon.dev/aggregator"}, True), ({"tokenExpirationSeconds": 600}, True),
     ({"tokenExpirationSeconds": 86400}, True), ({"tokenExpirationSeconds": 599}, False),
     ({"tokenExpirationSeconds": 86401}, False), ({"tokenExpirationSeconds": "3600"}, False),
     ({"audience": ""}, False), ({"audience": "sysmon dev"}, False),
     ({"audience": "https://kubernetes.default.svc"}, False),
     ({"audience": "https://kubernetes.default.svc.cluster.local"}, False),
     ({"mode": "FleetToken"}, False), ({"mode": "fleetToken", "secret": "x"}, False)],
)
def test_identity_is_the_same_rule_in_both(identity: dict[str, Any], ok: bool) -> None:
    doc = fleet_doc(identity=identity)
    assert (custom_resource_errors(doc) == []) is ok
    assert model_accepts(FleetSpec, doc["spec"]) is ok


AWS_QUEUE = "https://sqs.eu-west-1.amazonaws.com/123456789012/sysmon-pipeline"
LOCAL_QUEUE = "http://localstack:4566/000000000000/sysmon-pipeline"


@pytest.mark.parametrize(
    ("sqs", "ok"),
    [
        ({"queueUrl": AWS_QUEUE}, True),
        ({"queueUrl": "https://sqs.us-east-1.amazonaws.com/123456789012/orders.fifo"}, True),
        ({"queueUrl": "https://sqs.cn-north-1.amazonaws.com.cn/123456789012/q"}, True),
        ({"queueUrl": "https://sqs-fips.us-gov-west-1.amazonaws.com/123456789012/q", "region": "us-gov-west-1"}, True),
        ({"queueUrl": "https://queue.amazonaws.com/123456789012/q", "region": "us-east-1"}, True),
        ({"queueUrl": LOCAL_QUEUE, "endpointUrl": "http://localstack:4566", "region": "us-east-1"}, True),
        ({"queueUrl": AWS_QUEUE, "serviceAccountRoleArn": "arn:aws:iam::123456789012:role/exporter"}, True),
        ({"queueUrl": AWS_QUEUE, "serviceAccountRoleArn": "arn:aws-cn:iam::123456789012:role/path/exporter"}, True),
        ({"queueUrl": AWS_QUEUE, "credentialsSecret": {"name": "aws-key"}}, True),
        ({"queueUrl": AWS_QUEUE, "messageBytes": 16384, "linger": "0s", "retryMax": "1h"}, True),
        ({"queueUrl": AWS_QUEUE, "messageBytes": 262144, "linger": "60s", "retryMax": "1s"}, True),
        # Not a queue's URL: no account, a console page, another scheme, a name with a space or too long.
        ({"queueUrl": "https://sqs.eu-west-1.amazonaws.com/sysmon-pipeline"}, False),
        ({"queueUrl": "https://console.aws.amazon.com/sqs/v3/home?region=eu-west-1#/queues"}, False),
        ({"queueUrl": "sqs://sqs.eu-west-1.amazonaws.com/123456789012/q"}, False),
        ({"queueUrl": "https://sqs.eu-west-1.amazonaws.com/123456789012/a b"}, False),
        ({"queueUrl": "https://sqs.eu-west-1.amazonaws.com/123456789012/" + "q" * 81}, False),
        ({"queueUrl": "https://user:pw@sqs.eu-west-1.amazonaws.com/123456789012/q"}, False),
        ({}, False),
        # AWS's queues without endpointUrl, over https; a region the URL does not name must be given.
        ({"queueUrl": "http://sqs.eu-west-1.amazonaws.com/123456789012/q"}, False),
        ({"queueUrl": LOCAL_QUEUE, "region": "us-east-1"}, False),
        ({"queueUrl": LOCAL_QUEUE, "endpointUrl": "http://localstack:4566"}, False),
        ({"queueUrl": AWS_QUEUE, "region": "Europe"}, False),
        # One way to the credentials.
        ({"queueUrl": AWS_QUEUE, "serviceAccountRoleArn": "arn:aws:iam::123456789012:role/e",
          "credentialsSecret": {"name": "aws-key"}}, False),
        ({"queueUrl": AWS_QUEUE, "serviceAccountRoleArn": "arn:aws:iam::123456789012:user/e"}, False),
        ({"queueUrl": AWS_QUEUE, "credentialsSecret": {"name": "Aws_Key"}}, False),
        ({"queueUrl": AWS_QUEUE, "credentialsSecret": {"accessKeyIdKey": "id"}}, False),
        # The exporter's own bounds.
        ({"queueUrl": AWS_QUEUE, "messageBytes": 16383}, False),
        ({"queueUrl": AWS_QUEUE, "messageBytes": 262145}, False),
        ({"queueUrl": AWS_QUEUE, "linger": "61s"}, False),
        ({"queueUrl": AWS_QUEUE, "retryMax": "500ms"}, False),
        ({"queueUrl": AWS_QUEUE, "retryMax": "2h"}, False),
        ({"queueUrl": AWS_QUEUE, "consumerGroup": "a group"}, False),
        ({"queueUrl": AWS_QUEUE, "replicas": 2}, False),
    ],
)
def test_the_sqs_exporter_is_the_same_rule_in_both(sqs: dict[str, Any], ok: bool) -> None:
    doc = fleet_doc(exporters={"sqs": sqs})
    assert (custom_resource_errors(doc) == []) is ok, custom_resource_errors(doc)
    assert model_accepts(FleetSpec, doc["spec"]) is ok


@pytest.mark.parametrize(("alerts", "ok"), [({"replicas": 1}, True), ({"replicas": 2}, False)])
def test_the_sqs_exporter_beside_alerts_replicas_is_the_same_rule_in_both(alerts: dict[str, Any], ok: bool) -> None:
    """Alerts replicas on Redis split the samples into shards, which the exporter does not follow."""
    doc = fleet_doc(exporters={"sqs": {"queueUrl": AWS_QUEUE}}, alerts=alerts)
    assert (custom_resource_errors(doc) == []) is ok, custom_resource_errors(doc)
    assert model_accepts(FleetSpec, doc["spec"]) is ok


def test_the_sqs_exporters_crd_defaults_are_the_models() -> None:
    sqs = schema_of("MonitoredFleet")["properties"]["spec"]["properties"]["exporters"]["properties"]["sqs"]
    props = sqs["properties"]
    model = FleetSpec.model_validate(fleet_doc(exporters={"sqs": {
        "queueUrl": AWS_QUEUE, "credentialsSecret": {"name": "k"}}})["spec"]).exporters.sqs
    assert model is not None
    assert props["consumerGroup"]["default"] == model.consumer_group
    assert props["messageBytes"]["default"] == model.message_bytes
    assert parse_duration(props["linger"]["default"]) == model.linger
    assert parse_duration(props["retryMax"]["default"]) == model.retry_max
    secret = props["credentialsSecret"]["properties"]
    assert model.credentials_secret is not None
    assert secret["accessKeyIdKey"]["default"] == model.credentials_secret.access_key_id_key
    assert secret["secretAccessKeyKey"]["default"] == model.credentials_secret.secret_access_key_key
    # Absent means no exporter.
    assert FleetSpec.model_validate(fleet_doc()["spec"]).exporters.sqs is None
    assert "default" not in schema_of("MonitoredFleet")["properties"]["spec"]["properties"]["exporters"]
