"""AlertRule custom resource <-> ConfigService resource, and the status the operator writes back.

Pure: translation validates with the same model Apply uses (sysmon.core.alert_rule), so a rule
the aggregator would refuse is reported on the object at once, naming the field, instead of being
retried forever.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sysmon.core.config_model import spec_to_struct, validate_resource
from sysmon.core.metrics import InvalidInput
from sysmon.operator.status import condition
from sysmon.pb.v1 import config_pb2

KIND = "AlertRule"


class InvalidRule(Exception):
    pass


def config_name(namespace: str, name: str) -> str:
    """The rule's name in the aggregator: namespaced, as two namespaces may each have a rule "cpu"."""
    return f"{namespace}/{name}"


def to_resource(namespace: str, name: str, generation: int, spec: Mapping[str, Any]) -> config_pb2.Resource:
    """The Apply upsert for one AlertRule; its metadata.generation is the version."""
    try:
        validate_resource(KIND, config_name(namespace, name), spec)
    except InvalidInput as e:
        raise InvalidRule(str(e)) from e
    return config_pb2.Resource(kind=KIND, name=config_name(namespace, name), generation=generation,
                               spec=spec_to_struct(spec))


def to_key(namespace: str, name: str) -> config_pb2.ResourceKey:
    return config_pb2.ResourceKey(kind=KIND, name=config_name(namespace, name))


_VALIDATED = (True, "Validated", "the spec passed validation")


def _status(state: str, generation: int, now: str, previous: Mapping[str, Any] | None, fields: Mapping[str, Any],
            *, valid: tuple[bool, str, str], ready: tuple[bool, str, str]) -> dict[str, Any]:
    prev = (previous or {}).get("conditions") or []
    return {
        "state": state,
        "observedGeneration": generation,
        **fields,
        "conditions": [
            condition("Valid", *valid, generation, now, prev),
            condition("Ready", *ready, generation, now, prev),
        ],
    }


def pushed_status(*, generation: int, version: int, address: str, now: str,
                  previous: Mapping[str, Any] | None) -> dict[str, Any]:
    fields = {"pushedGeneration": generation, "configVersion": version, "aggregator": address,
              "lastPushTime": now, "lastError": None}
    return _status("Pushed", generation, now, previous, fields, valid=_VALIDATED,
                   ready=(True, "Pushed", f"generation {generation} is configuration version {version} at {address}"))


def pending_status(*, generation: int, error: str, retry_in: float, now: str,
                   previous: Mapping[str, Any] | None) -> dict[str, Any]:
    """The aggregator could not be reached; what was pushed before stays in force there."""
    return _status("Pending", generation, now, previous, {"lastError": error}, valid=_VALIDATED,
                   ready=(False, "AggregatorUnavailable", f"{error}; retrying in {retry_in:.0f}s"))


def invalid_status(*, generation: int, error: str, now: str, previous: Mapping[str, Any] | None) -> dict[str, Any]:
    return _status("Invalid", generation, now, previous, {"lastError": error},
                   valid=(False, "InvalidSpec", error), ready=(False, "InvalidSpec", "not pushed: fix the spec"))


def stale_status(*, generation: int, now: str, previous: Mapping[str, Any] | None) -> dict[str, Any]:
    error = (f"the aggregator holds a newer generation of this rule than {generation}; "
             "delete the AlertRule and create it again")
    return _status("Stale", generation, now, previous, {"lastError": error}, valid=_VALIDATED,
                   ready=(False, "StaleGeneration", error))
