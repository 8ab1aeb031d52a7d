"""The alert rule model: one shape for the AlertRule custom resource, ConfigService.Apply and
the `sysmon up --rules` file.

The spec is the custom resource's spec, field for field (camelCase aliases), so a rule moves
from a laptop to a cluster unchanged. Validation lives here, once: Apply refuses an invalid rule
with a message naming the field, the operator's CRD schema says the same in OpenAPI, and the
alerts service never sees a rule that did not pass.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Literal

from pydantic import AnyHttpUrl, Field, field_validator, model_validator

from sysmon.core import alert_template
from sysmon.core.durations import Duration
from sysmon.core.metrics import ATTR_KEY_RE, NAME_RE
from sysmon.core.spec_base import LabelSelector, Spec

Op = Literal[">", ">=", "<", "<=", "==", "!="]
Aggregation = Literal["last", "avg", "min", "max"]
Severity = Literal["critical", "warning", "info"]

OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}

# Prometheus label names; values are free text but bounded.
LABEL_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
MAX_WINDOW = timedelta(hours=1)
MAX_FOR = timedelta(days=1)
MAX_ACTIONS = 10
MAX_LABELS = 32
MAX_LABEL_VALUE = 1024
MAX_ANNOTATION = 4096
# Repeats more often than this are a notification storm, not a reminder.
MIN_REPEAT = timedelta(seconds=10)


class Condition(Spec):
    op: Op
    threshold: float
    # The alert resolves only once the value is back past this line (hysteresis); by default
    # at the threshold itself. For ">"/">=" it must not be above the threshold, for "<"/"<=" not below.
    resolve_threshold: float | None = Field(None, alias="resolveThreshold")

    @field_validator("threshold", "resolve_threshold")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    @model_validator(mode="after")
    def _hysteresis_side(self) -> Condition:
        r = self.resolve_threshold
        if r is None:
            return self
        if self.op in (">", ">=") and r > self.threshold:
            raise ValueError(f"resolveThreshold {r:g} must not be above threshold {self.threshold:g} for {self.op}")
        if self.op in ("<", "<=") and r < self.threshold:
            raise ValueError(f"resolveThreshold {r:g} must not be below threshold {self.threshold:g} for {self.op}")
        if self.op in ("==", "!=") and r != self.threshold:
            raise ValueError(f"resolveThreshold has no meaning for {self.op}; leave it out")
        return self

    def breached(self, value: float) -> bool:
        """The value crosses into alerting."""
        return OPS[self.op](value, self.threshold)

    @property
    def resolve_line(self) -> float:
        """The line the value must be back past to resolve: the resolve threshold, else the threshold."""
        return self.threshold if self.resolve_threshold is None else self.resolve_threshold

    def recovered(self, value: float) -> bool:
        """The value no longer crosses the resolve line:
        "> 90, resolve 85" keeps firing at 88 and resolves at 85."""
        return not OPS[self.op](value, self.resolve_line)


MAX_TIMEOUT = timedelta(minutes=1)


def _positive_at_most(v: timedelta, most: timedelta) -> timedelta:
    if not timedelta(0) < v <= most:
        raise ValueError(f"must be more than 0 and at most {most}")
    return v


class _HttpAction(Spec):
    url: AnyHttpUrl
    timeout: Duration = timedelta(seconds=10)
    # Name of an environment variable holding a bearer token: secrets stay out of rules and manifests.
    bearer_token_env: str | None = Field(None, alias="bearerTokenEnv", pattern=r"^[A-Z_][A-Z0-9_]*$")

    @field_validator("url")
    @classmethod
    def _no_credentials(cls, v: AnyHttpUrl) -> AnyHttpUrl:
        # A password in a rule ends up in the database, the CR and logs; the token goes by env var.
        if v.username or v.password:
            raise ValueError("must not contain credentials; put a token in an environment variable "
                             "and name it in bearerTokenEnv")
        return v

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: timedelta) -> timedelta:
        return _positive_at_most(v, MAX_TIMEOUT)


class WebhookAction(_HttpAction):
    """POST Alertmanager's webhook JSON payload to url."""


class AlertmanagerAction(_HttpAction):
    """Push to an Alertmanager's v2 API (url is its base, /api/v2/alerts is appended)."""


class LogAction(Spec):
    """Write each notification to the alerts service's log."""

    level: Literal["info", "warning", "error"] = "warning"


class Action(Spec):
    """Exactly one of webhook, alertmanager, log."""

    webhook: WebhookAction | None = None
    alertmanager: AlertmanagerAction | None = None
    log: LogAction | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Action:
        given = [k for k in ("webhook", "alertmanager", "log") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"an action is exactly one of webhook, alertmanager, log (got {given or 'none'})")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("webhook", "alertmanager", "log") if getattr(self, k) is not None)


def _check_labels(v: Mapping[str, str], what: str, max_value: int) -> None:
    if len(v) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} {what}")
    for k, val in v.items():
        if not LABEL_NAME_RE.match(k):
            raise ValueError(f"{what} name {k!r} must match [A-Za-z_][A-Za-z0-9_]*")
        if len(val) > max_value:
            raise ValueError(f"{what} {k!r} is longer than {max_value} characters")


class AlertRuleSpec(Spec):
    metric: str = Field(..., max_length=255)
    # Series attributes every matched series must have; empty: every series of the metric.
    match: dict[str, str] = Field(default_factory=dict)
    host_selector: LabelSelector = Field(default_factory=LabelSelector, alias="hostSelector")
    aggregation: Aggregation = "last"
    window: Duration = timedelta(minutes=1)
    condition: Condition
    for_: Duration = Field(timedelta(0), alias="for")
    severity: Severity = "warning"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    # Send a still-firing alert again this often (Alertmanager's repeat_interval); 0: never.
    repeat_interval: Duration = Field(timedelta(hours=4), alias="repeatInterval")
    actions: list[Action] = Field(default_factory=list, max_length=MAX_ACTIONS)

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(f"{v!r} is not a metric name ([A-Za-z_][A-Za-z0-9_.]*)")
        return v

    @field_validator("match")
    @classmethod
    def _match(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > 16:
            raise ValueError("at most 16 attributes")
        for k in v:
            if not ATTR_KEY_RE.match(k):
                raise ValueError(f"attribute {k!r} must match [A-Za-z_][A-Za-z0-9_.]*")
        return v

    @field_validator("window")
    @classmethod
    def _window(cls, v: timedelta) -> timedelta:
        return _positive_at_most(v, MAX_WINDOW)

    @field_validator("for_")
    @classmethod
    def _for(cls, v: timedelta) -> timedelta:
        if v > MAX_FOR:
            raise ValueError(f"must be at most {MAX_FOR}")
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        _check_labels(v, "label", MAX_LABEL_VALUE)
        return v

    @field_validator("annotations")
    @classmethod
    def _annotations(cls, v: dict[str, str]) -> dict[str, str]:
        _check_labels(v, "annotation", MAX_ANNOTATION)
        for k, text in v.items():
            try:
                alert_template.check(text)
            except alert_template.TemplateProblem as e:
                raise ValueError(f"annotation {k!r}: {e}") from None
        return v

    @field_validator("repeat_interval")
    @classmethod
    def _repeat(cls, v: timedelta) -> timedelta:
        if timedelta(0) < v < MIN_REPEAT:
            raise ValueError(f"must be 0 (never) or at least {MIN_REPEAT}")
        return v


__all__ = [
    "OPS",
    "Action",
    "AlertRuleSpec",
    "AlertmanagerAction",
    "Condition",
    "LogAction",
    "WebhookAction",
]
