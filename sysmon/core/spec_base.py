"""What every configuration spec shares: strict parsing with camelCase aliases, label selectors."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field


class Spec(BaseModel):
    # extra="forbid": a misspelt field in a rule is an error at Apply, not a silent default.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class LabelSelector(Spec):
    match_labels: dict[str, str] = Field(default_factory=dict, alias="matchLabels")

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels.items())
