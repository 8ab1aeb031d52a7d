"""/api/v1/hosts: the fleet with labels, last-seen time and status; one host with current values."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query

from sysmon.gateway import params
from sysmon.gateway.deps import FleetDep
from sysmon.gateway.models import PROBLEMS, HostDetail, HostList
from sysmon.gateway.problems import NotFound

router = APIRouter(prefix="/api/v1/hosts", tags=["hosts"], responses=PROBLEMS)  # type: ignore[arg-type]


@router.get("", response_model=HostList, summary="List hosts")
async def list_hosts(
    fleet: FleetDep,
    label: Annotated[list[str], Query(max_length=16, description="key=value; every one must match")] = [],  # noqa: B006
    status: Annotated[Literal["up", "stale", "down"] | None, Query(description="only hosts in this state")] = None,
) -> dict[str, Any]:
    """Every host known to PostgreSQL or the hot tier, sorted by name, with its status:
    **up** while samples arrive, **stale** after a few missed intervals, **down** after a long silence."""
    wanted = params.parse_pairs(label, "label")
    hosts = await fleet.hosts(wanted, status)
    return {"hosts": hosts, "count": len(hosts)}


@router.get("/{host}", response_model=HostDetail, summary="One host and its current values")
async def get_host(
    fleet: FleetDep,
    host: Annotated[str, Path(description="host id", max_length=253)],
) -> dict[str, Any]:
    params.check_host(host)
    info = await fleet.host(host)
    if info is None:
        raise NotFound(f"unknown host {host!r}", param="host")
    source, current = await fleet.current(host)
    return {**info, "source": source, "current": current}
