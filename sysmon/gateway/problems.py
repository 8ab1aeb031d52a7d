"""Errors as RFC 9457 problem details (application/problem+json), from one set of handlers.

Every bad parameter is a 4xx naming the parameter and what is wrong with it; storage that is
unreachable is a 503; anything else is a 500 that logs the traceback and shows no internals.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sysmon.core.metrics import InvalidInput

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://sysmon.dev/problems/"

TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}

# What "storage is away" looks like from asyncpg and redis-py; answered with 503, never 500.
UNAVAILABLE = (
    OSError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.AdminShutdownError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    TimeoutError,
)


def _default_kind(status: int) -> str:
    """The problem type of a status without one of its own: "Not found" -> "not-found"."""
    return TITLES.get(status, "error").lower().replace(" ", "-")


class Problem(Exception):
    """An error the client can act on. `kind` becomes the problem type URI."""

    def __init__(self, status: int, detail: str, *, kind: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.kind = kind or _default_kind(status)
        self.param = param
        self.headers = headers
        self.extra = extra


class NotFound(Problem):
    def __init__(self, detail: str, *, param: str | None = None):
        super().__init__(404, detail, kind="not-found", param=param)


def problem_body(status: int, detail: str, *, kind: str, instance: str | None = None,
                 invalid_params: list[dict[str, str]] | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": TYPE_BASE + kind,
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    if invalid_params:
        body["invalid_params"] = invalid_params
    body.update(extra)
    return body


def problem_response(status: int, detail: str, *, kind: str | None = None, instance: str | None = None,
                     invalid_params: list[dict[str, str]] | None = None,
                     headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    kind = kind or _default_kind(status)
    return JSONResponse(
        problem_body(status, detail, kind=kind, instance=instance, invalid_params=invalid_params, **extra),
        status_code=status, media_type=PROBLEM_JSON, headers=headers,
    )


def _loc(loc: tuple[Any, ...] | list[Any]) -> str:
    # ("query", "step") -> "step"; ("body", "x", 0) -> "x[0]"
    parts = [str(p) for p in loc if p not in ("query", "path", "header", "body", "cookie")]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "request"


def validation_problems(errors: list[dict[str, Any]]) -> list[dict[str, str]]:
    """FastAPI's validation errors as RFC 9457 invalid_params: name and reason, without echoing input."""
    out = []
    for e in errors:
        msg = str(e.get("msg", "invalid"))
        # pydantic prefixes custom errors with "Value error, "; the reason reads better without it.
        msg = msg.removeprefix("Value error, ")
        out.append({"name": _loc(e.get("loc", ())), "reason": msg})
    return out


async def _problem(request: Request, exc: Problem) -> JSONResponse:
    invalid = [{"name": exc.param, "reason": exc.detail}] if exc.param else None
    return problem_response(exc.status, exc.detail, kind=exc.kind, instance=request.url.path,
                            invalid_params=invalid, headers=exc.headers, **exc.extra)


async def _invalid_input(request: Request, exc: InvalidInput) -> JSONResponse:
    return problem_response(400, f"{exc.field}: {exc.message}", kind="invalid-parameter",
                            instance=request.url.path,
                            invalid_params=[{"name": exc.field, "reason": exc.message}])


async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    params = validation_problems(list(exc.errors()))
    detail = "; ".join(f"{p['name']}: {p['reason']}" for p in params) or "invalid request"
    return problem_response(400, detail, kind="invalid-parameter", instance=request.url.path,
                            invalid_params=params)


async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail if isinstance(exc.detail, str) else TITLES.get(exc.status_code, "error")
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"nothing at {request.url.path}"
    return problem_response(exc.status_code, detail, instance=request.url.path,
                            headers=getattr(exc, "headers", None))


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("storage unavailable for %s: %s", request.url.path, exc.__class__.__name__)
    return problem_response(503, "storage is unavailable; try again shortly", kind="unavailable",
                            instance=request.url.path, headers={"Retry-After": "5"})


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s", request.url.path, exc_info=exc)
    return problem_response(500, "internal error; the gateway's log has the details", kind="internal",
                            instance=request.url.path)


def install(app: FastAPI) -> None:
    app.add_exception_handler(Problem, _problem)  # type: ignore[arg-type]
    app.add_exception_handler(InvalidInput, _invalid_input)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http)  # type: ignore[arg-type]
    for exc in UNAVAILABLE:
        app.add_exception_handler(exc, _unavailable)
    app.add_exception_handler(Exception, _internal)
