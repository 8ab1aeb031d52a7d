"""ConfigService: Apply stores validated resources in PostgreSQL, Watch streams snapshots.

PostgreSQL holds the configuration, so that it survives restarts and every aggregator replica
serves the same; an Apply on one replica reaches watchers on the others through the bus (and
a periodic version check when the bus is down).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from sysmon.aggregator import auth, telemetry
from sysmon.aggregator.storage import CONNECTION_ERRORS, Storage
from sysmon.core import bus as busmod
from sysmon.core.config_model import LabelSelector, spec_from_struct, spec_to_struct, validate_resource
from sysmon.core.identity import Scope
from sysmon.core.metrics import InvalidInput
from sysmon.pb.v1 import config_pb2, config_pb2_grpc

log = logging.getLogger(__name__)

POLL_SECONDS = 30.0
MAX_RESOURCES_PER_APPLY = 1000


@dataclass(frozen=True)
class StoredResource:
    kind: str
    name: str
    generation: int
    spec: Mapping[str, Any]

    def to_pb(self) -> config_pb2.Resource:
        return config_pb2.Resource(kind=self.kind, name=self.name, generation=self.generation,
                                   spec=spec_to_struct(self.spec))

    def selected_for(self, labels: Mapping[str, str]) -> bool:
        sel = self.spec.get("hostSelector")
        if not sel:
            return True
        return LabelSelector.model_validate(sel).matches(labels)


class ConfigStore:
    def __init__(self, storage: Storage, bus: busmod.Bus | None):
        self.storage = storage
        self.bus = bus
        self.version = 0
        self.resources: dict[tuple[str, str], StoredResource] = {}
        self.changed = asyncio.Condition()
        self.loaded = asyncio.Event()

    async def refresh(self) -> None:
        pool = self.storage.pool
        if pool is None or not self.storage.ready.is_set():
            return
        async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            version = await conn.fetchval("SELECT version FROM config_state")
            if version == self.version and self.loaded.is_set():
                return
            rows = await conn.fetch("SELECT kind, name, generation, spec FROM config_resources")
        async with self.changed:
            self.resources = {(r["kind"], r["name"]): StoredResource(r["kind"], r["name"], r["generation"], r["spec"])
                              for r in rows}
            self.version = version
            telemetry.CONFIG_VERSION.set(version)
            self.loaded.set()
            self.changed.notify_all()

    async def apply(self, upserts: list[StoredResource], deletes: list[tuple[str, str]]) -> tuple[
        int, list[tuple[str, str]]
    ]:
        pool = self.storage.pool
        if pool is None or not self.storage.ready.is_set():
            raise ConnectionError("PostgreSQL is unavailable")
        stale: list[tuple[str, str]] = []
        async with pool.acquire() as conn, conn.transaction():
            version = await conn.fetchval("SELECT version FROM config_state FOR UPDATE")
            new_version = version + 1
            changed = False
            for r in upserts:
                row = await conn.fetchrow(
                    "SELECT generation, spec FROM config_resources WHERE kind = $1 AND name = $2", r.kind, r.name
                )
                if row is not None and row["generation"] > r.generation:
                    stale.append((r.kind, r.name))
                    continue
                if row is not None and row["generation"] == r.generation and row["spec"] == r.spec:
                    continue
                await conn.execute(
                    """
                    INSERT INTO config_resources (kind, name, generation, spec, version) VALUES ($1, $2, $3, $4, $5)
                    ON CONFLICT (kind, name) DO UPDATE SET generation = EXCLUDED.generation, spec = EXCLUDED.spec,
                        version = EXCLUDED.version, updated_at = now()
                    """,
                    r.kind, r.name, r.generation, dict(r.spec), new_version,
                )
                changed = True
            for kind, name in deletes:
                status = await conn.execute("DELETE FROM config_resources WHERE kind = $1 AND name = $2", kind, name)
                changed = changed or status != "DELETE 0"
            if changed:
                await conn.execute("UPDATE config_state SET version = $1", new_version)
                version = new_version
        if changed:
            await self.refresh()
            if self.bus is not None:
                with contextlib.suppress(Exception):
                    await self.bus.publish(busmod.CONFIG, str(version).encode())
        return version, stale

    def snapshot(self, kinds: set[str], labels: Mapping[str, str] | None) -> config_pb2.ConfigSnapshot:
        chosen = [
            r for (kind, _), r in sorted(self.resources.items())
            if (not kinds or kind in kinds) and (kind != "CollectorConfig" or labels is None or r.selected_for(labels))
        ]
        return config_pb2.ConfigSnapshot(version=self.version, resources=[r.to_pb() for r in chosen])

    async def follow(self, stop: asyncio.Event) -> None:
        """Keep the snapshot current: bus notifications, and a poll in case the bus is down."""
        async def poll() -> None:
            while not stop.is_set():
                with contextlib.suppress(*CONNECTION_ERRORS):
                    await self.refresh()
                await asyncio.sleep(1.0 if not self.loaded.is_set() else POLL_SECONDS)

        async def listen() -> None:
            if self.bus is None:
                return
            while not stop.is_set():
                try:
                    async for _ in self.bus.subscribe(busmod.CONFIG):
                        with contextlib.suppress(*CONNECTION_ERRORS):
                            await self.refresh()
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    log.debug("config notifications paused: %s", e)
                    await asyncio.sleep(1.0)

        await asyncio.gather(poll(), listen())


class ConfigServicer(config_pb2_grpc.ConfigServiceServicer):
    def __init__(self, store: ConfigStore):
        self.store = store

    async def Apply(
        self, request: config_pb2.ApplyRequest, context: grpc.aio.ServicerContext
    ) -> config_pb2.ApplyResponse:
        if len(request.upserts) + len(request.deletes) > MAX_RESOURCES_PER_APPLY:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"at most {MAX_RESOURCES_PER_APPLY} resources per Apply")
        upserts = []
        for i, r in enumerate(request.upserts):
            spec = spec_from_struct(r.spec)
            try:
                validate_resource(r.kind, r.name, spec)
                if r.generation < 0:
                    raise InvalidInput("generation", "must not be negative")
            except InvalidInput as e:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"upserts[{i}] {r.kind}/{r.name}: {e}")
            upserts.append(StoredResource(r.kind, r.name, r.generation, spec))
        try:
            version, stale = await self.store.apply(upserts, [(d.kind, d.name) for d in request.deletes])
        except (ConnectionError, *CONNECTION_ERRORS) as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"configuration storage unavailable: {e}")
        return config_pb2.ApplyResponse(
            version=version, stale=[config_pb2.ResourceKey(kind=k, name=n) for k, n in stale]
        )

    async def Watch(
        self, request: config_pb2.WatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[config_pb2.ConfigSnapshot]:
        kinds = set(request.kinds)
        principal = auth.current()
        # A collector's credential reads its own host's collector configuration, nothing more.
        own = kinds == {"CollectorConfig"} and request.host_id and principal.may_speak_for(request.host_id)
        if not principal.allows(Scope.READER) and not own:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                "a collector credential may watch only kinds=[CollectorConfig] for its own host_id")
        labels = dict(request.labels) if request.host_id or request.labels else None
        await self.store.loaded.wait()
        last: config_pb2.ConfigSnapshot | None = None
        while True:
            async with self.store.changed:
                snap = self.store.snapshot(kinds, labels)
                if last is not None and list(snap.resources) == list(last.resources):
                    await self.store.changed.wait()
                    continue
            last = snap
            yield snap
