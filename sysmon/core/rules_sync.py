"""Rules files into the aggregator, and kept there while `sysmon up` runs.

Rules go in through ConfigService.Apply, the operator's path, so there is one path. What an earlier
run applied is remembered in the data directory: rules the files no longer hold are deleted. While
running, the files are re-read when they change (or on SIGHUP, as Prometheus does); a file that
does not load, or that Apply refuses, is reported and the rules applied before stay in force.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import grpc

from sysmon.core.backoff import wait_any
from sysmon.core.client import call_metadata, open_channel
from sysmon.core.config_model import spec_to_struct
from sysmon.core.rules_file import KIND, RuleResource, RulesFileError, load_rules
from sysmon.core.settings import AggregatorClientSettings
from sysmon.pb.v1 import config_pb2, config_pb2_grpc

log = logging.getLogger("sysmon.rules")

APPLY_TIMEOUT_S = 30.0


class RulesApplyError(RuntimeError):
    """The aggregator refused the rules, or could not be reached; the message says which and why."""


def _stamp(paths: Sequence[Path]) -> tuple[tuple[int, int, int] | None, ...]:
    """What tells a changed file from an unchanged one without reading it: inode, mtime, size.
    The inode catches editors that save by renaming a new file over the old one."""
    out: list[tuple[int, int, int] | None] = []
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            out.append(None)
        else:
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


class RulesFileSync:
    def __init__(self, paths: Sequence[Path], record: Path):
        self.paths = [Path(p) for p in paths]
        self.record = record  # the names this data directory's last Apply left in force
        self.client: AggregatorClientSettings | None = None  # the aggregator of the first apply()
        self.applied: list[RuleResource] = []
        self._stamp = _stamp(self.paths)

    def load(self) -> list[RuleResource]:
        """Raises RulesFileError naming the file, document and field."""
        self._stamp = _stamp(self.paths)
        return load_rules(self.paths)

    async def apply(self, rules: list[RuleResource], client: AggregatorClientSettings | None = None) -> None:
        client = client or self.client
        if client is None:
            raise RulesApplyError("no aggregator to apply the rules to")
        self.client = client
        try:
            before = set(json.loads(self.record.read_text()))
        except (OSError, ValueError):
            before = set()
        names = {r.name for r in rules}
        request = config_pb2.ApplyRequest(
            upserts=[config_pb2.Resource(kind=KIND, name=r.name, generation=r.generation,
                                         spec=spec_to_struct(r.spec)) for r in rules],
            deletes=[config_pb2.ResourceKey(kind=KIND, name=n) for n in sorted(before - names)],
        )
        async with open_channel(client) as channel:
            try:
                await config_pb2_grpc.ConfigServiceStub(channel).Apply(
                    request, metadata=call_metadata(client), timeout=APPLY_TIMEOUT_S
                )
            except grpc.aio.AioRpcError as e:
                raise RulesApplyError(e.details() or e.code().name) from None
        self.record.write_text(json.dumps(sorted(names)))
        self.applied = rules

    async def reload(self) -> bool:
        """Re-read and re-apply; True when the new rules are in force. Never raises for bad input."""
        try:
            rules = self.load()
            await self.apply(rules)
        except (RulesFileError, RulesApplyError) as e:
            log.error("rules not reloaded, the %d applied before stay in force: %s", len(self.applied), e)
            return False
        log.info("rules reloaded: %d from %s", len(rules), ", ".join(map(str, self.paths)))
        return True

    async def watch(self, stop: asyncio.Event, hup: asyncio.Event, poll_s: float = 1.0) -> None:
        """Reload when a file changes (checked every poll_s) or when hup is set, until stop."""
        while not stop.is_set():
            await wait_any(stop, hup, seconds=poll_s)
            if stop.is_set():
                return
            forced = hup.is_set()
            hup.clear()
            if forced or _stamp(self.paths) != self._stamp:
                await self.reload()
