"""Rules as the evaluator uses them: an AlertRuleSpec compiled once into plain attributes.

Compiled rules are immutable; a changed rule is a new object (the evaluator compares specs to
tell a change from a re-delivery of the same snapshot).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sysmon.core.alert_rule import OPS, Action, AlertRuleSpec

# Prometheus label names; series attributes (OpenTelemetry's dotted names) and host labels are
# mapped onto them the way OpenTelemetry's Prometheus exporter does: other characters become "_".
_LABEL_BAD = re.compile(r"[^A-Za-z0-9_]")

# The rule name of a host's no-data alert; ":" cannot appear in a Kubernetes object name, so no
# AlertRule can take it.
NO_DATA_RULE = "sysmon:no-data"
NO_DATA_ALERTNAME = "SysmonNoData"
FLEET_SILENT_RULE = "sysmon:fleet-silent"
FLEET_SILENT_ALERTNAME = "SysmonFleetSilent"


def label_name(key: str) -> str:
    name = _LABEL_BAD.sub("_", key)
    return "_" + name if name[:1].isdigit() or not name else name


def fingerprint(labels: Mapping[str, str]) -> str:
    """A stable 64-bit hash of a label set, as 16 hex digits (Prometheus's fingerprint shape)."""
    h = hashlib.blake2b(digest_size=8)
    for k in sorted(labels):
        h.update(k.encode())
        h.update(b"\xff")
        h.update(labels[k].encode())
        h.update(b"\xff")
    return h.hexdigest()


def receiver_key(action: Action) -> str:
    """Where a notification goes, as one string: notifications are delivered in order per key."""
    if action.webhook is not None:
        return f"webhook:{action.webhook.url}"
    if action.alertmanager is not None:
        return f"alertmanager:{action.alertmanager.url}"
    return "log"


@dataclass(frozen=True, eq=False)
class CompiledRule:
    name: str
    spec: AlertRuleSpec
    metric: str
    match: tuple[tuple[str, str], ...]
    selector: tuple[tuple[str, str], ...]
    aggregation: str
    window_ms: int
    op: Callable[[float, float], bool]
    threshold: float
    resolve_line: float
    for_ms: int
    repeat_ms: int
    severity: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    # (receiver key, the action as JSON), in the rule's order; deduplicated by receiver.
    actions: tuple[tuple[str, dict[str, Any]], ...]
    # Identifies (aggregation, window): rules sharing it share one computed value per series.
    value_key: tuple[str, int] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "value_key", (self.aggregation, self.window_ms))

    def selects_series(self, name: str, attributes: Mapping[str, str]) -> bool:
        return name == self.metric and all(attributes.get(k) == v for k, v in self.match)

    def selects_host(self, host_labels: Mapping[str, str]) -> bool:
        return all(host_labels.get(k) == v for k, v in self.selector)

    def same_as(self, other: CompiledRule) -> bool:
        return self.name == other.name and self.spec == other.spec


def _ms(td: Any) -> int:
    return round(td.total_seconds() * 1000)


def compile_rule(name: str, spec: AlertRuleSpec) -> CompiledRule:
    c = spec.condition
    actions: dict[str, dict[str, Any]] = {}
    for a in spec.actions:
        actions.setdefault(receiver_key(a), a.model_dump(mode="json", by_alias=True, exclude_none=True))
    return CompiledRule(
        name=name,
        spec=spec,
        metric=spec.metric,
        match=tuple(sorted(spec.match.items())),
        selector=tuple(sorted(spec.host_selector.match_labels.items())),
        aggregation=spec.aggregation,
        window_ms=_ms(spec.window),
        op=OPS[c.op],
        threshold=c.threshold,
        resolve_line=c.resolve_line,
        for_ms=_ms(spec.for_),
        repeat_ms=_ms(spec.repeat_interval),
        severity=spec.severity,
        labels=dict(spec.labels),
        annotations=dict(spec.annotations),
        actions=tuple(actions.items()),
    )


def compile_rules(specs: Mapping[str, AlertRuleSpec]) -> dict[str, CompiledRule]:
    return {name: compile_rule(name, spec) for name, spec in specs.items()}
