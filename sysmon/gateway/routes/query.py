"""/api/v1/query: series of one or more metrics and hosts over a range, from the tier that holds it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response

from sysmon.core.metrics import InvalidInput
from sysmon.core.query import QueryRequest
from sysmon.gateway import params, telemetry
from sysmon.gateway.deps import FleetDep, QueryDep
from sysmon.gateway.models import PROBLEMS, QueryResponse
from sysmon.gateway.problems import NotFound
from sysmon.gateway.series import encode, sum_by_host

router = APIRouter(prefix="/api/v1", tags=["query"], responses=PROBLEMS)  # type: ignore[arg-type]

MAX_METRICS = 10
DEFAULT_RANGE = timedelta(hours=1)


@router.get("/query", response_model=QueryResponse, summary="Query series")
async def query(
    fleet: FleetDep,
    service: QueryDep,
    metric: Annotated[list[str], Query(min_length=1, max_length=MAX_METRICS,
                                       description="metric name; repeat for several")],
    host: Annotated[list[str], Query(max_length=1000, description="host id; repeat; none: every host")] = [],  # noqa: B006
    match: Annotated[list[str], Query(max_length=16, description="attribute=value every series must have")] = [],  # noqa: B006
    start: Annotated[str | None, Query(max_length=64, description="RFC 3339, Unix seconds or now-1h (default)")] = None,
    end: Annotated[str | None, Query(max_length=64, description="RFC 3339, Unix seconds or now (default)")] = None,
    step: Annotated[str | None, Query(max_length=32, description="bucket width, e.g. 15s; default: range/600")] = None,
    agg: Annotated[Literal["avg", "min", "max"], Query(description="how samples in a bucket combine")] = "avg",
    sum_by: Annotated[Literal["host"] | None, Query(description="host: add the series of each host")] = None,
) -> Response:
    """The tier is chosen by how far back `start` reaches: **hot** (Redis, last 5 min), **raw**
    (24 h), **1m** rollups (7 d), **1h** rollups (beyond); the answer says which. A step finer
    than the tier's resolution is raised to it. At most 11,000 points per series."""
    now = datetime.now(UTC)
    t_end = params.parse_time(end, now, "end") if end is not None else now
    t_start = params.parse_time(start, now, "start") if start is not None else t_end - DEFAULT_RANGE
    params.check_range(t_start, t_end)
    t_step = params.parse_step(step) if step is not None else params.auto_step(t_start, t_end)
    metrics = list(dict.fromkeys(params.check_metric(m) for m in metric))
    hosts = list(dict.fromkeys(params.check_host(h) for h in host))
    wanted = params.parse_pairs(match, "match")
    unknown = await fleet.unknown_hosts(hosts)
    if unknown:
        raise NotFound(f"unknown host {unknown[0]!r}" + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""),
                       param="host")
    unknown = await fleet.unknown_metrics(metrics)
    if unknown:
        raise NotFound(f"unknown metric {unknown[0]!r}; see a host's current values for the names it has",
                       param="metric")
    requests = [QueryRequest(m, t_start, t_end, t_step, hosts, wanted, agg) for m in metrics]
    results = await asyncio.gather(*(service.query(r, now) for r in requests))
    series = [s for r in results for s in r.series]
    if len(series) > service.limits.max_series:
        raise InvalidInput("metric", f"the query matches {len(series)} series, more than "
                                     f"{service.limits.max_series}; narrow host or match")
    if sum_by == "host":
        series = sum_by_host(series)
    telemetry.QUERY_TIER.labels(str(results[0].tier)).inc()
    return Response(encode(results, series), media_type="application/json")
