"""Response shapes, for the OpenAPI document at /docs (large answers are encoded without them)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Host(BaseModel):
    host: str
    hostname: str
    labels: dict[str, str]
    os: str
    agent_version: str
    cpu_count: int | None
    memory_total_bytes: int | None
    boot_time: str | None
    interval_ms: int | None
    last_seen: str | None = Field(description="time of the newest sample (RFC 3339)")
    last_seen_ms: int | None
    age_s: float | None = Field(description="seconds since the newest sample")
    status: Literal["up", "stale", "down"]
    last_seen_source: Literal["hot", "postgresql"] = Field(
        description="where last_seen comes from: the hot tier (exact), or PostgreSQL while Redis is away "
                    "(refreshed once a minute, and status allows for that)")


class HostList(BaseModel):
    hosts: list[Host]
    count: int


class CurrentValue(BaseModel):
    metric: str
    attributes: dict[str, str]
    unit: str
    t: int = Field(description="sample time, Unix milliseconds")
    value: float


class HostDetail(Host):
    source: Literal["hot", "raw"] = Field(description="where the current values come from")
    current: list[CurrentValue]


class Series(BaseModel):
    host: str
    metric: str
    attributes: dict[str, str]
    unit: str
    timestamps: list[int] = Field(description="bucket starts, Unix milliseconds")
    values: list[float]


class QueryResponse(BaseModel):
    tier: Literal["hot", "raw", "1m", "1h"] = Field(description="the storage tier that answered")
    step: str
    step_ms: int
    start: str
    end: str
    start_ms: int
    end_ms: int
    series: list[Series]


class Alert(BaseModel):
    rule: str
    fingerprint: str
    host: str
    state: str
    previous: str | None
    severity: str
    labels: dict[str, str]
    annotations: dict[str, str]
    value: float | None
    active_at: str | None
    at: str | None
    id: int | None = None


class AlertList(BaseModel):
    alerts: list[Alert]
    count: int


class AlertHistory(AlertList):
    next_before_id: int | None = Field(description="pass as before_id for the next (older) page")


class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    invalid_params: list[dict[str, str]] | None = None


PROBLEMS = {
    400: {"model": Problem, "description": "a parameter is invalid", "content": {"application/problem+json": {}}},
    401: {"model": Problem, "description": "missing or wrong bearer token"},
    404: {"model": Problem, "description": "unknown host or metric"},
    503: {"model": Problem, "description": "storage unavailable"},
}
