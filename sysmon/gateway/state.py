"""What the gateway holds while it runs: connections, the query service, the live hub."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis

from sysmon.core.bus import Bus
from sysmon.core.hot import HotTier
from sysmon.core.identity import Authenticator
from sysmon.core.query import QueryService
from sysmon.core.settings import GatewaySettings
from sysmon.gateway.fleet import Fleet
from sysmon.gateway.live.hub import LiveHub


@dataclass
class GatewayState:
    settings: GatewaySettings
    # Not enabled: no authentication (loopback in `sysmon up`, or --insecure-no-auth).
    auth: Authenticator
    pool: asyncpg.Pool
    redis: aioredis.Redis | None
    hot: HotTier | None
    bus: Bus | None
    query: QueryService
    fleet: Fleet
    hub: LiveHub
