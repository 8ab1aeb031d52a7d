"""What a MonitoredFleet's status says, computed from its live children: pure, so tests can step
through rollouts with plain dicts.

Conditions follow the Kubernetes convention (metav1.Condition): Ready, Progressing, Degraded,
each with a reason, a message a person can act on, observedGeneration, and lastTransitionTime
that moves only when the status flips.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# A component's block in status, where its name is not the key (status keys are camelCase).
STATUS_KEYS = {"collector": "collectors", "sqs-exporter": "sqsExporter"}


@dataclass(frozen=True)
class Rollout:
    """One workload: how many pods it wants, how many are ready, how many run the current template."""

    component: str
    desired: int
    ready: int
    updated: int
    observed: bool  # the controller has seen the latest spec (status.observedGeneration)

    @property
    def complete(self) -> bool:
        return self.observed and self.updated >= self.desired and self.ready >= self.desired

    @property
    def available(self) -> bool:
        return self.desired > 0 and self.ready >= self.desired

    def text(self) -> str:
        return f"{self.component} {self.ready}/{self.desired} ready"


def _observed(obj: Mapping[str, Any]) -> bool:
    gen = obj.get("metadata", {}).get("generation")
    seen = obj.get("status", {}).get("observedGeneration")
    return gen is None or (seen is not None and seen >= gen)


def daemonset_rollout(component: str, obj: Mapping[str, Any] | None) -> Rollout:
    if obj is None:
        return Rollout(component, 0, 0, 0, False)
    st = obj.get("status") or {}
    return Rollout(component, st.get("desiredNumberScheduled", 0), st.get("numberReady", 0),
                   st.get("updatedNumberScheduled", 0), _observed(obj))


def deployment_rollout(component: str, obj: Mapping[str, Any] | None) -> Rollout:
    if obj is None:
        return Rollout(component, 0, 0, 0, False)
    st = obj.get("status") or {}
    desired = obj.get("spec", {}).get("replicas", 1)
    return Rollout(component, desired, st.get("readyReplicas", 0), st.get("updatedReplicas", 0), _observed(obj))


def condition(type_: str, ok: bool, reason: str, message: str, generation: int, now: str,
              previous: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    status = "True" if ok else "False"
    before = next((c for c in previous if c.get("type") == type_), None)
    since = before["lastTransitionTime"] if before and before.get("status") == status and \
        before.get("lastTransitionTime") else now
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "observedGeneration": generation, "lastTransitionTime": since}


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fleet_status(*, generation: int, rollouts: Sequence[Rollout], error: tuple[str, str] | None,
                 previous: Mapping[str, Any] | None, now: str) -> dict[str, Any]:
    """The whole status block. `error` is (reason, message) when the last reconcile failed."""
    prev_conditions = (previous or {}).get("conditions") or []
    by = {r.component: r for r in rollouts}
    ready = bool(rollouts) and all(r.available for r in rollouts)
    rolling = [r for r in rollouts if not r.complete]
    summary = ", ".join(r.text() for r in rollouts)

    if error is not None:
        degraded = (True, error[0], error[1])
    elif not ready and not rolling:
        degraded = (True, "ComponentsUnavailable", summary)
    else:
        degraded = (False, "AsExpected", "reconciled")
    if rolling and error is None:
        progressing = (True, "RollingOut", "waiting for " + ", ".join(r.text() for r in rolling))
    else:
        progressing = (False, "Complete" if error is None else "Stalled", summary)
    if ready:
        ready_c = (True, "AllComponentsReady", summary)
    elif "collector" in by and by["collector"].observed and by["collector"].desired == 0:
        ready_c = (False, "NoNodesSelected", "no node matches the collectors' nodeSelector and tolerations")
    else:
        ready_c = (False, "ComponentsNotReady", summary)

    def block(r: Rollout) -> dict[str, int]:
        return {"desired": r.desired, "ready": r.ready, "updated": r.updated}

    status: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": [
            condition("Ready", *ready_c, generation, now, prev_conditions),
            condition("Progressing", *progressing, generation, now, prev_conditions),
            condition("Degraded", *degraded, generation, now, prev_conditions),
        ],
    }
    for r in rollouts:
        status[STATUS_KEYS.get(r.component, r.component)] = block(r)
    # None removes a disabled component's block (status is merge-patched).
    for c in ("gateway", "alerts", "sqsExporter"):
        status.setdefault(c, None)
    return status
