"""/healthz (the process answers), /readyz (PostgreSQL and Redis answer), /metrics (Prometheus)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sysmon.gateway.deps import StateDep
from sysmon.gateway.problems import PROBLEM_JSON, problem_body

router = APIRouter(tags=["health"])
CHECK_TIMEOUT_S = 2.0


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def _check(coro: Any) -> str:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await coro
        return "ok"
    except TimeoutError:
        return f"no answer within {CHECK_TIMEOUT_S:g}s"
    except Exception as e:  # any failure means not ready; the name says which
        return f"failed: {e.__class__.__name__}"


@router.get("/readyz", summary="Readiness: PostgreSQL and Redis answer",
            responses={503: {"description": "a dependency does not answer"}})
async def readyz(state: StateDep) -> Response:
    checks = {"postgres": await _check(state.pool.fetchval("SELECT 1"))}
    if state.redis is not None:
        checks["redis"] = await _check(state.redis.ping())
    if all(v == "ok" for v in checks.values()):
        return JSONResponse({"status": "ready", "checks": checks})
    failing = ", ".join(f"{k} {v}" for k, v in checks.items() if v != "ok")
    return JSONResponse(problem_body(503, f"not ready: {failing}", kind="not-ready", instance="/readyz",
                                     checks=checks), status_code=503, media_type=PROBLEM_JSON)


@router.get("/metrics", summary="Prometheus metrics of this gateway", response_class=Response)
async def metrics(request: Request) -> Response:
    # The gateway's own families (and the process's, unless another component serves them: sysmon up).
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)
