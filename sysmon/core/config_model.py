"""Configuration resources carried by ConfigService (Apply, Watch): their specs and validation.

Specs are validated here, once, with the same models the operator's custom resources use, so
that an invalid resource is refused at Apply with a message naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from google.protobuf import json_format, struct_pb2
from pydantic import BaseModel, Field, ValidationError

from sysmon.core.metrics import METRIC_GROUPS, InvalidInput
from sysmon.core.spec_base import CollectionInterval, LabelSelector, MetricGroups, Spec


class CollectorConfigSpec(Spec):
    """What the collectors of a fleet do; from MonitoredFleet.spec (collection part)."""

    host_selector: LabelSelector = Field(default_factory=LabelSelector, alias="hostSelector")
    interval: CollectionInterval = timedelta(seconds=5)
    metric_groups: MetricGroups = Field(default_factory=lambda: list(METRIC_GROUPS), alias="metricGroups")
    labels: dict[str, str] = Field(default_factory=dict)


def kinds() -> dict[str, type[BaseModel]]:
    """kind -> the model of its spec. AlertRule is imported here, on first use, so that the
    collector, which only reads CollectorConfig, never loads the rule model and its templates."""
    from sysmon.core.alert_rule import AlertRuleSpec

    return {"CollectorConfig": CollectorConfigSpec, "AlertRule": AlertRuleSpec}


NAME_MAX = 253


def _loc(err: Mapping[str, Any]) -> str:
    return ".".join(str(p) for p in err["loc"]) or "spec"


def validate_resource(kind: str, name: str, spec: Mapping[str, Any]) -> BaseModel:
    """Parse one resource's spec, or raise InvalidInput naming kind/name and the field."""
    known = kinds()
    model = known.get(kind)
    if model is None:
        raise InvalidInput("kind", f"unknown kind {kind!r}; known kinds: {sorted(known)}")
    if not name or len(name) > NAME_MAX:
        raise InvalidInput("name", f"{kind} name must be 1-{NAME_MAX} characters")
    try:
        return model.model_validate(dict(spec))
    except ValidationError as e:
        first = e.errors()[0]
        raise InvalidInput(f"spec.{_loc(first)}", f"{kind}/{name}: {first['msg']}") from e


def spec_from_struct(spec: struct_pb2.Struct) -> dict[str, Any]:
    """Struct -> plain dict; whole numbers come back as int (Struct carries only doubles)."""

    def fix(v: Any) -> Any:
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v

    return fix(json_format.MessageToDict(spec))


def spec_to_struct(spec: Mapping[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(dict(spec))
    return out
