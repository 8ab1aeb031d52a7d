"""Desired children vs live ones: what to apply, what to leave alone, what to delete.

Writing an object that already matches would be harmless for most kinds, but a pod template that
is written back with any difference restarts every pod; so the reconciler compares first and
writes only what differs. "Differs" is either a different spec hash (the fleet changed) or a field
we set that someone changed on the live object (drift). Fields the API server adds (defaults,
status, managed fields) are not ours and are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from sysmon.operator.fleet_spec import QUANTITY_RE
from sysmon.operator.manifests import SPEC_HASH, key

_QUANTITY = re.compile(QUANTITY_RE)
_SUFFIX = {
    "": Decimal(1), "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
    "P": Decimal("1e15"), "E": Decimal("1e18"),
    "Ki": Decimal(2**10), "Mi": Decimal(2**20), "Gi": Decimal(2**30), "Ti": Decimal(2**40),
    "Pi": Decimal(2**50), "Ei": Decimal(2**60),
}


def parse_quantity(value: str | int) -> Decimal | None:
    """A Kubernetes quantity as a number ("500m" -> 0.5, "1Gi" -> 1073741824), None if it is not one."""
    if isinstance(value, int):
        return Decimal(value)
    m = _QUANTITY.match(value)
    if not m:
        return None
    number = Decimal(m.group(1))  # the pattern admits only decimal numbers
    suffix = m.group(3) or ""
    if suffix[:1] in ("e", "E"):
        return number * (Decimal(10) ** int(suffix[1:]))
    return number * _SUFFIX[suffix]


def _same_scalar(want: Any, have: Any) -> bool:
    if want == have and type(want) is type(have):
        return True
    # The API server rewrites quantities into canonical form ("0.5" -> "500m", "1024Mi" -> "1Gi").
    if isinstance(want, str | int) and isinstance(have, str | int) and not isinstance(want, bool):
        a, b = parse_quantity(want), parse_quantity(have)
        return a is not None and a == b
    return False


def _empty(value: Any) -> bool:
    return value in ({}, [], None)


def first_difference(want: Any, have: Any, path: str = "") -> str | None:
    """The path of the first field set in `want` that `have` does not match; None if it matches.

    Keys absent from `want` are the server's (defaults, status) and not compared. An empty map or
    list in `want` matches an absent field: the API server omits empty ones.
    """
    if isinstance(want, Mapping):
        if not isinstance(have, Mapping):
            return path or "."
        for k, v in want.items():
            sub = f"{path}.{k}" if path else k
            if k not in have:
                if _empty(v):
                    continue
                return sub
            diff = first_difference(v, have[k], sub)
            if diff is not None:
                return diff
        return None
    if isinstance(want, Sequence) and not isinstance(want, str):
        if not isinstance(have, Sequence) or isinstance(have, str) or len(want) != len(have):
            return path
        for i, (w, h) in enumerate(zip(want, have, strict=True)):
            diff = first_difference(w, h, f"{path}[{i}]")
            if diff is not None:
                return diff
        return None
    return None if _same_scalar(want, have) else path


Operation = Literal["create", "update", "delete", "keep", "conflict"]


@dataclass(frozen=True)
class Step:
    op: Operation
    kind: str
    name: str
    reason: str
    manifest: Mapping[str, Any] | None = None


def compare(desired: Mapping[str, Any], live: Mapping[str, Any] | None) -> Step:
    kind, name = key(desired)
    if live is None:
        return Step("create", kind, name, "missing", desired)
    uid = desired["metadata"]["ownerReferences"][0]["uid"]
    if not owned_by(live, uid):
        # Never take over an object someone else made (or one a deleted fleet left for the garbage collector).
        return Step("conflict", kind, name, f"{kind} {name} exists and is not owned by this fleet")
    want_hash = desired["metadata"]["annotations"][SPEC_HASH]
    have_hash = (live.get("metadata", {}).get("annotations") or {}).get(SPEC_HASH)
    if have_hash != want_hash:
        return Step("update", kind, name, "spec changed", desired)
    diff = first_difference({k: v for k, v in desired.items() if k != "metadata"}, live)
    if diff is None:
        diff = first_difference(desired["metadata"], live.get("metadata", {}), "metadata")
    if diff is not None:
        return Step("update", kind, name, f"drifted at {diff}", desired)
    return Step("keep", kind, name, "up to date")


def owned_by(live: Mapping[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in live.get("metadata", {}).get("ownerReferences") or [])


def plan(desired: Sequence[Mapping[str, Any]], live: Mapping[tuple[str, str], Mapping[str, Any] | None],
         owner_uid: str) -> list[Step]:
    """One step per child: create/update/keep for the desired ones, delete for owned leftovers.

    `live` maps every (kind, name) the fleet could own to the live object or None.
    """
    steps = [compare(d, live.get(key(d))) for d in desired]
    wanted = {key(d) for d in desired}
    for (kind, name), obj in sorted(live.items()):
        # Only what this fleet owns is deleted; an object of the same name made by someone else stays.
        if (kind, name) not in wanted and obj is not None and owned_by(obj, owner_uid):
            steps.append(Step("delete", kind, name, "component disabled"))
    return steps
