"""The series and samples PromQL reads: the series catalog under Prometheus names, raw samples.

The catalog (every series' Prometheus labels, names.py) is read from PostgreSQL at most every
few seconds and matched in memory; samples come from the raw tier through storage.raw.read, sealed
blocks and open frames alike. A query therefore reaches back as far as the raw tier keeps samples
(24 h by default); older ranges answer with what is there.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from sysmon.core.promql.engine import NAME, Labels, Matcher, PromQLError, SeriesData
from sysmon.core.promql.names import prom_label, prom_name
from sysmon.core.storage import raw

CATALOG_TTL_S = 5.0
KIND_TYPES = {1: "gauge", 2: "gauge", 3: "counter"}


@dataclass(frozen=True)
class CatalogEntry:
    id: int
    labels: Labels
    unit: str
    kind: int


def series_labels(host: str, name: str, attributes: dict[str, str], unit: str, kind: int) -> Labels:
    d = {prom_label(k): v for k, v in attributes.items()}
    d["host"] = host
    d[NAME] = prom_name(name, unit, kind)
    return tuple(sorted(d.items()))


def _compile(m: Matcher) -> object:
    if m.op in ("=~", "!~"):
        try:
            return re.compile(m.value)
        except re.error as e:
            raise PromQLError(f"invalid regular expression in {m.name}{m.op}{m.value!r}: {e}") from e
    return m.value


def matches(labels: dict[str, str], matchers: Sequence[Matcher], compiled: Sequence[object]) -> bool:
    for m, c in zip(matchers, compiled, strict=True):
        v = labels.get(m.name, "")
        if m.op == "=":
            ok = v == c
        elif m.op == "!=":
            ok = v != c
        elif m.op == "=~":
            ok = c.fullmatch(v) is not None  # type: ignore[attr-defined]
        else:
            ok = c.fullmatch(v) is None  # type: ignore[attr-defined]
        if not ok:
            return False
    return True


class PostgresSource:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool
        self._catalog: list[CatalogEntry] = []
        self._dicts: list[dict[str, str]] = []
        self._loaded = -1e9

    async def catalog(self) -> list[tuple[CatalogEntry, dict[str, str]]]:
        if time.monotonic() - self._loaded > CATALOG_TTL_S:
            async with self.pool.acquire() as conn:
                rows = await conn.fetch("SELECT series_id, host_id, name, attributes, unit, kind FROM series")
            entries = []
            for r in rows:
                attrs = r["attributes"]
                attrs = json.loads(attrs) if isinstance(attrs, str) else dict(attrs)
                entries.append(CatalogEntry(r["series_id"], series_labels(r["host_id"], r["name"], attrs, r["unit"],
                                                                          r["kind"]), r["unit"], r["kind"]))
            self._catalog = entries
            self._dicts = [dict(e.labels) for e in entries]
            self._loaded = time.monotonic()
        return list(zip(self._catalog, self._dicts, strict=True))

    async def matching(self, matchers: Sequence[Matcher]) -> list[CatalogEntry]:
        if not any(m.op in ("=", "=~") and m.value != "" and not (m.op == "=~" and re.fullmatch(m.value, ""))
                   for m in matchers):
            raise PromQLError("vector selector must contain at least one non-empty matcher")
        compiled = [_compile(m) for m in matchers]
        return [e for e, d in await self.catalog() if matches(d, matchers, compiled)]

    async def select(self, matchers: Sequence[Matcher], start_ms: int, end_ms: int) -> list[SeriesData]:
        entries = await self.matching(matchers)
        if not entries:
            return []
        start = datetime.fromtimestamp(start_ms / 1000, UTC)
        end = datetime.fromtimestamp((end_ms + 1) / 1000, UTC)
        async with self.pool.acquire() as conn:
            got = await raw.read(conn, [e.id for e in entries], start, end)
        return [SeriesData(e.labels, *got[e.id]) for e in entries if e.id in got]
