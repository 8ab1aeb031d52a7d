"""What every configuration spec shares: strict parsing with camelCase aliases, label selectors."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from sysmon.core.durations import Duration
from sysmon.core.metrics import METRIC_GROUPS


class Spec(BaseModel):
    # extra="forbid": a misspelt field in a rule is an error at Apply, not a silent default.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class LabelSelector(Spec):
    match_labels: dict[str, str] = Field(default_factory=dict, alias="matchLabels")

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels.items())


def _interval(v: timedelta) -> timedelta:
    if not timedelta(milliseconds=100) <= v <= timedelta(hours=1):
        raise ValueError("interval must be between 100ms and 1h")
    return v


def _metric_groups(v: list[str]) -> list[str]:
    unknown = sorted(set(v) - set(METRIC_GROUPS))
    if unknown:
        raise ValueError(f"unknown metric groups {unknown}; known: {list(METRIC_GROUPS)}")
    if len(set(v)) != len(v):
        raise ValueError("metric groups repeat")
    return v


# One rule wherever a collection interval or a choice of metric groups is given: the agent's
# flags, CollectorConfig, the MonitoredFleet spec (whose CRD says the same in CEL and enums).
CollectionInterval = Annotated[Duration, AfterValidator(_interval)]
MetricGroups = Annotated[list[str], AfterValidator(_metric_groups)]
