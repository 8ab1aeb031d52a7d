"""Configuration resources: validation naming the field, Struct round trips, label selectors."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from google.protobuf import struct_pb2

from sysmon.core.config_model import (
    NAME_MAX,
    CollectorConfigSpec,
    LabelSelector,
    spec_from_struct,
    spec_to_struct,
    validate_resource,
)
from sysmon.core.metrics import METRIC_GROUPS, InvalidInput

KIND = "CollectorConfig"


def invalid(kind: str, name: str, spec: dict[str, Any]) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        validate_resource(kind, name, spec)
    return info.value


def test_valid_spec_with_aliases() -> None:
    spec = validate_resource(KIND, "prod", {
        "hostSelector": {"matchLabels": {"env": "prod"}},
        "interval": "10s",
        "metricGroups": ["cpu", "memory"],
        "labels": {"team": "infra"},
    })
    assert isinstance(spec, CollectorConfigSpec)
    assert spec.interval == timedelta(seconds=10)
    assert spec.metric_groups == ["cpu", "memory"]
    assert spec.host_selector.match_labels == {"env": "prod"}
    assert spec.labels == {"team": "infra"}


def test_empty_spec_gets_defaults() -> None:
    spec = validate_resource(KIND, "default", {})
    assert isinstance(spec, CollectorConfigSpec)
    assert spec.interval == timedelta(seconds=5)
    assert spec.metric_groups == list(METRIC_GROUPS)
    assert spec.host_selector.match_labels == {}


def test_interval_as_a_number_of_seconds() -> None:
    spec = validate_resource(KIND, "x", {"interval": 30})
    assert isinstance(spec, CollectorConfigSpec)
    assert spec.interval == timedelta(seconds=30)


def test_unknown_kind() -> None:
    e = invalid("AlertRuleX", "x", {})
    assert e.field == "kind"
    assert e.message == "unknown kind 'AlertRuleX'; known kinds: ['AlertRule', 'CollectorConfig']"


@pytest.mark.parametrize("name", ["", "n" * (NAME_MAX + 1)])
def test_bad_name(name: str) -> None:
    e = invalid(KIND, name, {})
    assert e.field == "name"
    assert e.message == f"CollectorConfig name must be 1-{NAME_MAX} characters"


def test_name_at_the_limit() -> None:
    validate_resource(KIND, "n" * NAME_MAX, {})


@pytest.mark.parametrize(
    ("interval", "says"),
    [
        ("-5s", "invalid duration '-5s'"),
        ("0s", "interval must be between 100ms and 1h"),
        ("50ms", "interval must be between 100ms and 1h"),
        ("2h", "interval must be between 100ms and 1h"),
        ("often", "invalid duration 'often'"),
        (-5, "a duration cannot be negative"),
    ],
)
def test_bad_interval_names_spec_interval(interval: object, says: str) -> None:
    e = invalid(KIND, "fleet-a", {"interval": interval})
    assert e.field == "spec.interval"
    assert e.message.startswith("CollectorConfig/fleet-a: ")
    assert says in e.message
    assert str(e).startswith("spec.interval: CollectorConfig/fleet-a: ")


def test_huge_interval_is_invalid_input() -> None:
    e = invalid(KIND, "fleet-a", {"interval": "99999999999w"})
    assert e.field == "spec.interval"


def test_unknown_metric_group_names_spec_metric_groups() -> None:
    e = invalid(KIND, "fleet-a", {"metricGroups": ["cpu", "gpu", "fpga"]})
    assert e.field == "spec.metricGroups"
    assert f"unknown metric groups ['fpga', 'gpu']; known: {list(METRIC_GROUPS)}" in e.message


def test_unknown_field_is_named() -> None:
    e = invalid(KIND, "fleet-a", {"intervall": "5s"})
    assert e.field == "spec.intervall"
    assert "Extra inputs are not permitted" in e.message


def test_nested_field_is_named_with_its_path() -> None:
    e = invalid(KIND, "fleet-a", {"hostSelector": {"matchLabels": {"env": 3}}})
    assert e.field == "spec.hostSelector.matchLabels.env"


def test_wrong_type_is_named() -> None:
    e = invalid(KIND, "fleet-a", {"metricGroups": "cpu"})
    assert e.field == "spec.metricGroups"


# --- Struct round trip ---------------------------------------------------------------------------


def test_spec_struct_round_trip_keeps_ints() -> None:
    spec = {
        "interval": "5s",
        "count": 3,
        "ratio": 0.5,
        "enabled": True,
        "nothing": None,
        "metricGroups": ["cpu", "disk"],
        "nested": {"matchLabels": {"env": "prod"}, "numbers": [1, 2.5, -7, 0]},
    }
    back = spec_from_struct(spec_to_struct(spec))
    assert back == spec
    assert type(back["count"]) is int
    assert type(back["nested"]["numbers"][0]) is int
    assert type(back["nested"]["numbers"][1]) is float
    assert type(back["enabled"]) is bool


def test_struct_carries_doubles_but_whole_numbers_come_back_as_int() -> None:
    s = spec_to_struct({"interval": 30})
    assert isinstance(s, struct_pb2.Struct)
    assert s.fields["interval"].number_value == 30.0
    assert spec_from_struct(s) == {"interval": 30}
    assert type(spec_from_struct(s)["interval"]) is int


def test_struct_round_trip_survives_serialization() -> None:
    spec = {"interval": 30, "hostSelector": {"matchLabels": {"zone": "a"}}}
    wire = spec_to_struct(spec).SerializeToString()
    back = struct_pb2.Struct.FromString(wire)
    assert spec_from_struct(back) == spec
    parsed = validate_resource(KIND, "x", spec_from_struct(back))
    assert isinstance(parsed, CollectorConfigSpec)
    assert parsed.interval == timedelta(seconds=30)


def test_empty_struct() -> None:
    assert spec_from_struct(struct_pb2.Struct()) == {}
    assert spec_from_struct(spec_to_struct({})) == {}


# --- LabelSelector ---------------------------------------------------------------------------------


def test_empty_selector_matches_everything() -> None:
    sel = LabelSelector()
    assert sel.matches({})
    assert sel.matches({"env": "prod"})


def test_selector_requires_every_label() -> None:
    sel = LabelSelector(matchLabels={"env": "prod", "zone": "a"})
    assert sel.matches({"env": "prod", "zone": "a"})
    assert sel.matches({"env": "prod", "zone": "a", "team": "x"})
    assert not sel.matches({"env": "prod"})
    assert not sel.matches({"env": "prod", "zone": "b"})
    assert not sel.matches({})


def test_selector_value_must_match_exactly() -> None:
    sel = LabelSelector(match_labels={"env": ""})
    assert sel.matches({"env": ""})
    assert not sel.matches({})
    assert not LabelSelector(match_labels={"env": "Prod"}).matches({"env": "prod"})
