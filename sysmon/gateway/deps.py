"""Dependencies as Annotated aliases, as the FastAPI full-stack template writes them."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from sysmon.core.query import QueryService
from sysmon.gateway.auth import bearer_from_header, token_matches
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


def require_token(request: Request, state: StateDep) -> None:
    if state.token is None:
        return
    if not token_matches(bearer_from_header(request.headers.get("authorization")), state.token):
        raise Problem(401, "a valid bearer token is required: Authorization: Bearer <token>",
                      kind="unauthorized", headers={"WWW-Authenticate": 'Bearer realm="sysmon"'})
