"""`sysmon operator`: kopf in one namespace, with peering (leader election) and a liveness endpoint."""

from __future__ import annotations

import asyncio
import logging

import kopf

from sysmon.core.settings import OperatorSettings
from sysmon.operator.config_client import ConfigClient
from sysmon.operator.handlers import OperatorContext, register
from sysmon.operator.kube import ClientKube
from sysmon.operator.settings import OperatorIdentity

log = logging.getLogger(__name__)


def liveness_url(listen: str) -> str | None:
    return f"http://{listen}/healthz" if listen else None


async def run(settings: OperatorSettings, stop: asyncio.Event) -> None:
    namespace = settings.served_namespace()
    config = ConfigClient(settings)
    identity = OperatorIdentity()
    ctx = OperatorContext(settings=settings, kube=ClientKube(), config=config, identity=identity)
    registry = register(kopf.OperatorRegistry(), settings)
    log.info("serving namespace %s; AlertRules go to %s as %s; peering %s", namespace, settings.aggregator,
             config.credentials_description(), "off (standalone)" if settings.standalone else settings.peering)
    log.info("fleets' aggregators take ServiceAccount %s as admin", identity.principal(namespace))
    try:
        await kopf.operator(
            registry=registry,
            memo=kopf.Memo(ctx=ctx),
            namespaces=[namespace],
            clusterwide=False,
            standalone=settings.standalone,
            peering_name=settings.peering,
            priority=settings.priority,
            liveness_endpoint=liveness_url(settings.health_listen),
            stop_flag=stop,
        )
    finally:
        await config.close()
