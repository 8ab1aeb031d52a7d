"""Rules from the aggregator: a ConfigService.Watch stream of AlertRule snapshots.

The operator (or `sysmon up --rules`) applies rules through Apply; every change reaches this
stream as a full snapshot, so a rule takes effect, changes or goes without a restart. The
stream reconnects with exponential backoff and jitter; until the first snapshot arrives the
service evaluates nothing (it would otherwise acknowledge samples no rule has looked at).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import grpc
from pydantic import ValidationError

from sysmon.core.alert_rule import AlertRuleSpec
from sysmon.core.backoff import Backoff, wait_or_stop
from sysmon.core.client import call_metadata, open_channel
from sysmon.core.config_model import spec_from_struct
from sysmon.core.settings import AggregatorClientSettings
from sysmon.pb.v1 import config_pb2, config_pb2_grpc

log = logging.getLogger(__name__)

KIND = "AlertRule"
OnRules = Callable[[int, dict[str, AlertRuleSpec]], Awaitable[None] | None]


def parse_snapshot(snap: config_pb2.ConfigSnapshot) -> tuple[dict[str, AlertRuleSpec], list[str]]:
    """The valid rules of a snapshot, and a message for each one skipped."""
    rules: dict[str, AlertRuleSpec] = {}
    problems = []
    for r in snap.resources:
        if r.kind != KIND:
            continue
        try:
            rules[r.name] = AlertRuleSpec.model_validate(spec_from_struct(r.spec))
        except ValidationError as e:
            # Apply validated it; a rule that fails here was stored by an older, laxer version.
            first = e.errors()[0]
            problems.append(f"AlertRule/{r.name}: {'.'.join(map(str, first['loc']))}: {first['msg']}")
    return rules, problems


class RuleFeed:
    def __init__(self, settings: AggregatorClientSettings, on_rules: OnRules, *, max_backoff: float = 30.0):
        self.settings = settings
        self.on_rules = on_rules
        self.max_backoff = max_backoff
        self.version = 0
        self.connected = False
        self.last_error = ""

    async def run(self, stop: asyncio.Event) -> None:
        backoff = Backoff(initial=0.5, maximum=self.max_backoff)
        metadata = call_metadata(self.settings)
        while not stop.is_set():
            channel = open_channel(self.settings)
            try:
                stub = config_pb2_grpc.ConfigServiceStub(channel)
                call = stub.Watch(config_pb2.WatchRequest(kinds=[KIND]), metadata=metadata)
                async for snap in call:
                    self.connected = True
                    backoff.reset()
                    rules, problems = parse_snapshot(snap)
                    for p in problems:
                        log.error("rule skipped: %s", p)
                    self.version = snap.version
                    result = self.on_rules(snap.version, rules)
                    if result is not None:
                        await result
                self.last_error = "the aggregator ended the Watch stream"
            except grpc.aio.AioRpcError as e:
                self.last_error = f"{e.code().name}: {e.details()}"
                if e.code() == grpc.StatusCode.UNAUTHENTICATED:
                    log.error("the aggregator refused our credential (%s); set SYSMON_TOKEN or SYSMON_TOKEN_FILE "
                              "(a token of scope reader)", e.details())
            finally:
                self.connected = False
                await channel.close(grace=None)
            delay = backoff.next_delay()
            log.warning("rule stream from %s interrupted (%s); reconnecting in %.1fs", self.settings.aggregator,
                        self.last_error, delay)
            await wait_or_stop(stop, delay)
