"""The Prometheus HTTP API under /prometheus/api/v1/, for Grafana, promtool and Prometheus clients.

query, query_range, series, labels, label/<name>/values, metadata and status/buildinfo, with the
response and error shapes of Prometheus 2.42 ({"status": "success", "data": ...} or
{"status": "error", "errorType": ..., "error": ...}), GET or form-encoded POST as Prometheus takes
them. series, labels and label values list the series with a sample in [start, end] (the whole
retention without them), as Prometheus does; 2.42 has no `limit` there. PromQL is
sysmon.core.promql's subset; names are Prometheus's (sysmon.core.promql.names).
Limits: a query selects at most max_series series, a range query has at most
max_points_per_series steps (the REST API's limits); violations are bad_data or execution errors.
"""

from __future__ import annotations

import logging
import math
import re
import time
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
import orjson
import promql_parser
from fastapi import APIRouter, Request
from fastapi.responses import Response

from sysmon.core.promql.engine import (
    NAME,
    Labels,
    PromQLError,
    Scalar,
    instant_query,
    parse,
    selector_matchers,
)
from sysmon.core.promql.ranges import range_query
from sysmon.core.promql.source import KIND_TYPES, PostgresSource
from sysmon.gateway.deps import StateDep
from sysmon.gateway.problems import UNAVAILABLE

log = logging.getLogger(__name__)
router = APIRouter(prefix="/prometheus/api/v1", tags=["prometheus"])
# What Grafana and clients read to pick features: the version sysmon's PromQL is compared against.
BUILD_INFO = {"version": "2.42.0", "revision": "sysmon", "branch": "sysmon", "buildUser": "sysmon",
              "buildDate": "", "goVersion": ""}
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
STATUS = {"bad_data": 400, "execution": 422, "unavailable": 503, "timeout": 503}


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def success(data: Any) -> Response:
    return _json({"status": "success", "data": data})


def error(error_type: str, message: str) -> Response:
    return _json({"status": "error", "errorType": error_type, "error": message}, STATUS.get(error_type, 400))


def fmt(v: float) -> str:
    """A value as Prometheus writes it (strconv.FormatFloat(v, 'f', -1, 64) for the usual ones)."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def fmt_all(vs: np.ndarray) -> list[str]:
    """fmt of each value, the integral ones told apart with numpy (formatting a day of a hundred
    series is 140,000 values); a series of only one kind is written by one map in C."""
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(vs)
        integral = finite & (np.trunc(vs) == vs) & (np.abs(vs) < 1e15)
    if integral.all():
        return list(map(str, vs.astype(np.int64).tolist()))
    if finite.all() and not integral.any():
        return list(map(repr, vs.tolist()))
    ints = np.where(integral, vs, 0).astype(np.int64).tolist()
    return [str(i) if k else (repr(v) if math.isfinite(v) else fmt(v))
            for v, i, k in zip(vs.tolist(), ints, integral.tolist(), strict=True)]


async def _params(request: Request) -> list[tuple[str, str]]:
    out = list(request.query_params.multi_items())
    if request.method == "POST" and "application/x-www-form-urlencoded" in request.headers.get("content-type", ""):
        body = await request.body()
        if len(body) > 1_000_000:
            raise PromQLError("the form is larger than 1 MB")
        out += parse_qsl(body.decode(errors="replace"), keep_blank_values=True)
    return out


def _one(params: list[tuple[str, str]], name: str, default: str | None = None) -> str | None:
    return next((v for k, v in params if k == name), default)


# What a timestamp may be here: any datetime in every time zone (years 1 to 9999); Prometheus takes
# wider ones, but no sample is stored outside these, so a time beyond them is clamped to them.
MIN_MS = -62_135_596_800_000 + 86_400_000
MAX_MS = 253_402_214_400_000
# The bounds Prometheus's own clients send for "no bound" (web/api/v1 minTime, maxTime).
PROMETHEUS_BOUNDS = {"-292273086-05-16T16:47:06Z": MIN_MS, "292277025-08-17T07:12:55.807Z": MAX_MS}


def parse_time(s: str | None, default_ms: int, name: str) -> int:
    """Unix seconds (fractions allowed) or RFC 3339, as Prometheus takes them; in ms."""
    if s is None or s == "":
        return default_ms
    if s in PROMETHEUS_BOUNDS:
        return PROMETHEUS_BOUNDS[s]
    bad = PromQLError(f'invalid parameter "{name}": cannot parse "{s}" to a valid timestamp')
    try:
        seconds = float(s)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise bad
        return min(MAX_MS, max(MIN_MS, round(seconds * 1000)))
    try:
        t = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise bad from None
    if t.tzinfo is None:  # RFC 3339 names its offset; a time without one means nothing certain
        raise bad
    return min(MAX_MS, max(MIN_MS, int(t.timestamp() * 1000)))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def parse_step(s: str | None) -> int:
    if not s:
        raise PromQLError('invalid parameter "step": missing')
    try:
        return round(float(s) * 1000)
    except ValueError:
        pass
    try:
        return int(promql_parser.parse_duration(s).total_seconds() * 1000)
    except ValueError:
        raise PromQLError(f'invalid parameter "step": cannot parse "{s}" to a valid duration') from None


def _source(request: Request, state: Any) -> PostgresSource:
    src = getattr(request.app.state, "promql_source", None)
    if src is None:
        src = request.app.state.promql_source = PostgresSource(
            state.pool, state.settings.raw_retention, state.settings.rollup_1m_retention)
    return src


def _metric(labels: Labels) -> dict[str, str]:
    return dict(labels)


def _limits(state: Any) -> tuple[int, int]:
    return state.settings.max_series, state.settings.max_points_per_series


async def _run(request: Request, fn: Any) -> Response:
    try:
        return await fn()
    except PromQLError as e:
        return error(e.error_type, e.message)
    except UNAVAILABLE as e:
        log.warning("storage unavailable for %s: %s", request.url.path, e.__class__.__name__)
        return error("unavailable", "storage is unavailable; try again shortly")


@router.get("/query", summary="PromQL instant query", operation_id="prometheus_query_get")
@router.post("/query", summary="PromQL instant query (form-encoded)", operation_id="prometheus_query_post")
async def query(request: Request, state: StateDep) -> Response:
    async def run() -> Response:
        p = await _params(request)
        expr = _one(p, "query")
        if not expr:
            raise PromQLError('invalid parameter "query": missing')
        t = parse_time(_one(p, "time"), _now_ms(), "time")
        max_series, _ = _limits(state)
        v = await instant_query(expr, t, _source(request, state), max_series=max_series)
        ts = t / 1000
        if isinstance(v, Scalar):
            return success({"resultType": "scalar", "result": [ts, fmt(v.v)]})
        if v and hasattr(v[0], "ts"):
            return success({"resultType": "matrix", "result": [
                {"metric": _metric(r.labels), "values": [[int(a) / 1000, fmt(float(b))] for a, b in zip(r.ts, r.vs,
                                                                                                         strict=True)]}
                for r in v]})
        return success({"resultType": "vector", "result": [
            {"metric": _metric(s.labels), "value": [ts, fmt(s.v)]} for s in v]})

    return await _run(request, run)


@router.get("/query_range", summary="PromQL range query", operation_id="prometheus_query_range_get")
@router.post("/query_range", summary="PromQL range query (form-encoded)", operation_id="prometheus_query_range_post")
async def query_range(request: Request, state: StateDep) -> Response:
    async def run() -> Response:
        p = await _params(request)
        expr = _one(p, "query")
        if not expr:
            raise PromQLError('invalid parameter "query": missing')
        now = _now_ms()
        start = parse_time(_one(p, "start"), now - 3_600_000, "start")
        end = parse_time(_one(p, "end"), now, "end")
        if end < start:
            raise PromQLError('invalid parameter "end": end timestamp must not be before start time')
        step = parse_step(_one(p, "step"))
        max_series, max_points = _limits(state)
        got = await range_query(expr, start, end, step, _source(request, state), max_series=max_series,
                                max_points=max_points)
        return success({"resultType": "matrix", "result": [
            # (time, value) tuples, which orjson writes as the arrays Prometheus writes
            {"metric": _metric(labels), "values": list(zip((ts / 1000).tolist(), fmt_all(vs), strict=True))}
            for labels, (ts, vs) in sorted(got.items(), key=lambda kv: kv[0])]})

    return await _run(request, run)


async def _selected(request: Request, state: Any, p: list[tuple[str, str]], required: bool) -> list[Any]:
    """The series that match[] selects (every series when there is none and none is required) with
    a sample in [start, end] (the whole retention by default), as Prometheus 2.42 answers series,
    labels and label values."""
    start = parse_time(_one(p, "start"), MIN_MS, "start")
    end = parse_time(_one(p, "end"), MAX_MS, "end")
    selectors = [v for k, v in p if k == "match[]"]
    if not selectors and required:
        raise PromQLError("no match[] parameter provided")
    src = _source(request, state)
    if not selectors:
        return await src.with_samples([e for e, _ in await src.catalog()], start, end)
    seen: dict[int, Any] = {}
    for sel in selectors:
        node = parse(sel)
        if not isinstance(node, promql_parser.VectorSelector):
            raise PromQLError(f"invalid parameter \"match[]\": {sel!r} is not a series selector")
        for e in await src.matching(selector_matchers(node)):
            seen[e.id] = e
    return await src.with_samples(list(seen.values()), start, end)


@router.get("/series", summary="Series matching selectors", operation_id="prometheus_series_get")
@router.post("/series", summary="Series matching selectors (form-encoded)", operation_id="prometheus_series_post")
async def series(request: Request, state: StateDep) -> Response:
    async def run() -> Response:
        entries = await _selected(request, state, await _params(request), required=True)
        return success([_metric(e.labels) for e in entries])

    return await _run(request, run)


@router.get("/labels", summary="Label names", operation_id="prometheus_labels_get")
@router.post("/labels", summary="Label names (form-encoded)", operation_id="prometheus_labels_post")
async def labels(request: Request, state: StateDep) -> Response:
    async def run() -> Response:
        entries = await _selected(request, state, await _params(request), required=False)
        return success(sorted({k for e in entries for k, _ in e.labels}))

    return await _run(request, run)


@router.get("/label/{name}/values", summary="Values of one label")
async def label_values(name: str, request: Request, state: StateDep) -> Response:
    async def run() -> Response:
        if not LABEL_NAME.fullmatch(name):
            raise PromQLError(f'invalid label name: "{name}"')
        entries = await _selected(request, state, await _params(request), required=False)
        return success(sorted({v for e in entries for k, v in e.labels if k == name}))

    return await _run(request, run)


@router.get("/metadata", summary="Metric types and units")
async def metadata(request: Request, state: StateDep) -> Response:
    async def run() -> Response:
        wanted = request.query_params.get("metric")
        out: dict[str, list[dict[str, str]]] = {}
        for e, d in await _source(request, state).catalog():
            name = d[NAME]
            if (wanted and name != wanted) or name in out:
                continue
            out[name] = [{"type": KIND_TYPES.get(e.kind, "unknown"), "help": "", "unit": e.unit}]
        return success(out)

    return await _run(request, run)


@router.get("/status/buildinfo", summary="Build information, as Prometheus reports it")
async def buildinfo() -> Response:
    return success(BUILD_INFO)
