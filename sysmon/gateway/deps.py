"""Dependencies as Annotated aliases, as the FastAPI full-stack template writes them."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from sysmon.core.identity import InvalidCredential, Principal, Scope
from sysmon.core.query import QueryService
from sysmon.gateway.fleet import Fleet
from sysmon.gateway.problems import Problem
from sysmon.gateway.state import GatewayState


def get_state(request: Request) -> GatewayState:
    return request.app.state.gateway


StateDep = Annotated[GatewayState, Depends(get_state)]


def get_fleet(state: StateDep) -> Fleet:
    return state.fleet


def get_query(state: StateDep) -> QueryService:
    return state.query


FleetDep = Annotated[Fleet, Depends(get_fleet)]
QueryDep = Annotated[QueryService, Depends(get_query)]


async def require_reader(request: Request, state: StateDep) -> Principal:
    """The caller's principal, which must have scope reader: 401 without a valid credential, 403
    with one that may not read (a collector's)."""
    try:
        principal = await state.auth.authenticate(request.headers.get("authorization"))
    except InvalidCredential as e:
        raise Problem(401, f"a valid bearer token is required: Authorization: Bearer <token> ({e})",
                      kind="unauthorized", headers={"WWW-Authenticate": 'Bearer realm="sysmon"'}) from e
    if not principal.allows(Scope.READER):
        raise Problem(403, f"this credential ({principal.subject}, scope {', '.join(sorted(principal.scopes))}) "
                           "may not read; the API needs scope reader", kind="forbidden")
    return principal
