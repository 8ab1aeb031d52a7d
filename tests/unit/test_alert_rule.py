"""The AlertRule spec: the example from DESIGN.md parses; each invalid field is named."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from sysmon.core.alert_rule import AlertRuleSpec, Condition
from sysmon.core.config_model import validate_resource
from sysmon.core.metrics import InvalidInput

DESIGN_EXAMPLE: dict[str, Any] = {
    "metric": "system.filesystem.utilization",
    "match": {"mountpoint": "/"},
    "hostSelector": {"matchLabels": {}},
    "aggregation": "avg",
    "window": "1m",
    "condition": {"op": ">", "threshold": 0.9, "resolveThreshold": 0.85},
    "for": "2m",
    "severity": "critical",
    "annotations": {"summary": "{{ host }}: / is {{ value | percent }} full"},
    "actions": [
        {"webhook": {"url": "http://receiver:9000/hook"}},
        {"alertmanager": {"url": "http://alertmanager:9093"}},
    ],
}


def test_the_design_example_parses() -> None:
    spec = validate_resource("AlertRule", "root-disk-full", DESIGN_EXAMPLE)
    assert isinstance(spec, AlertRuleSpec)
    assert spec.for_ == timedelta(minutes=2)
    assert spec.window == timedelta(minutes=1)
    assert [a.kind for a in spec.actions] == ["webhook", "alertmanager"]
    assert spec.repeat_interval == timedelta(hours=4)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"metric": "bad metric"}, "spec.metric"),
        ({"condition": {"op": "~", "threshold": 1}}, "spec.condition.op"),
        ({"condition": {"op": ">", "threshold": 1, "resolveThreshold": 2}}, "spec.condition"),
        ({"condition": {"op": "<", "threshold": 1, "resolveThreshold": 0.5}}, "spec.condition"),
        ({"condition": {"op": ">", "threshold": float("nan")}}, "spec.condition.threshold"),
        ({"aggregation": "median"}, "spec.aggregation"),
        ({"window": "0s"}, "spec.window"),
        ({"window": "2h"}, "spec.window"),
        ({"for": "-1m"}, "spec.for"),
        ({"severity": "urgent"}, "spec.severity"),
        ({"actions": [{}]}, "spec.actions.0"),
        ({"actions": [{"webhook": {"url": "not a url"}}]}, "spec.actions.0.webhook.url"),
        ({"labels": {"bad-name": "x"}}, "spec.labels"),
        ({"windw": "1m"}, "spec.windw"),
    ],
)
def test_an_invalid_field_is_named(change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_resource("AlertRule", "r", {**DESIGN_EXAMPLE, **change})
    assert info.value.field == field


def test_missing_condition_is_named() -> None:
    spec = {k: v for k, v in DESIGN_EXAMPLE.items() if k != "condition"}
    with pytest.raises(InvalidInput) as info:
        validate_resource("AlertRule", "r", spec)
    assert info.value.field == "spec.condition"


@pytest.mark.parametrize(
    ("op", "threshold", "resolve", "value", "breached", "recovered"),
    [
        (">", 90, 85, 91, True, False),
        (">", 90, 85, 88, False, False),  # between the lines: hold the current state
        (">", 90, 85, 85, False, True),
        (">", 90, None, 90, False, True),
        ("<", 10, 15, 9, True, False),
        ("<", 10, 15, 12, False, False),
        ("<", 10, 15, 15, False, True),
        ("==", 0, None, 0, True, False),
        ("!=", 0, None, 0, False, True),
    ],
)
def test_hysteresis(op: str, threshold: float, resolve: float | None, value: float, breached: bool,
                    recovered: bool) -> None:
    c = Condition.model_validate({"op": op, "threshold": threshold, "resolveThreshold": resolve})
    assert c.breached(value) is breached
    assert c.recovered(value) is recovered
