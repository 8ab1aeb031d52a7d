"""/api/v1/alerts: what is pending or firing now, and the history of transitions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from sysmon.core import alert_store
from sysmon.gateway import params
from sysmon.gateway.deps import StateDep
from sysmon.gateway.models import PROBLEMS, AlertHistory, AlertList

router = APIRouter(prefix="/api/v1/alerts", tags=["alerts"], responses=PROBLEMS)  # type: ignore[arg-type]

HostParam = Annotated[str | None, Query(max_length=253, description="only this host's alerts")]
RuleParam = Annotated[str | None, Query(max_length=253, description="only this rule's alerts")]


def _check(host: str | None, rule: str | None) -> None:
    if host is not None:
        params.check_host(host)
    if rule is not None:
        params.check_text(rule, "rule", max_length=253)


@router.get("", response_model=AlertList, summary="Current alerts")
async def current(
    state: StateDep,
    host: HostParam = None,
    rule: RuleParam = None,
    alert_state: Annotated[Literal["pending", "firing"] | None, Query(alias="state")] = None,
) -> dict[str, Any]:
    """Pending and firing alerts: firing first, then by severity and age."""
    _check(host, rule)
    rows = await alert_store.current(state.pool, host=host, rule=rule, state=alert_state)
    return {"alerts": [r.to_json() for r in rows], "count": len(rows)}


@router.get("/history", response_model=AlertHistory, summary="Alert transitions")
async def history(
    state: StateDep,
    host: HostParam = None,
    rule: RuleParam = None,
    since: Annotated[str | None, Query(max_length=64, description="RFC 3339, Unix seconds or now-24h")] = None,
    until: Annotated[str | None, Query(max_length=64)] = None,
    before_id: Annotated[int | None, Query(ge=1, le=2**63 - 1, description="page: next_before_id of the last")] = None,
    limit: Annotated[int, Query(ge=1, le=alert_store.MAX_HISTORY)] = 100,
) -> dict[str, Any]:
    """Transitions (pending, firing, resolved), newest first, a page at a time."""
    _check(host, rule)
    now = datetime.now(UTC)
    t_since = params.parse_time(since, now, "since") if since is not None else None
    t_until = params.parse_time(until, now, "until") if until is not None else None
    if t_since is not None and t_until is not None:
        params.check_range(t_since, t_until)
    rows = await alert_store.history(state.pool, since=t_since, until=t_until, host=host, rule=rule,
                                     before_id=before_id, limit=limit)
    return {
        "alerts": [r.to_json() for r in rows],
        "count": len(rows),
        "next_before_id": rows[-1].id if len(rows) == limit else None,
    }
