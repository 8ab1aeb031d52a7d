"""kopf handlers: thin. They read the object, call the pure functions (manifests, compare, status,
rules), make the API or gRPC calls, and write the status through kopf's patch.

Handlers are plain functions registered by `register()` (not at import), so tests call them
directly with a fake Kube and a real ConfigClient, and the operator's settings reach them
through kopf's memo instead of globals.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
from pydantic import ValidationError

from sysmon.core.backoff import Backoff
from sysmon.core.settings import OperatorSettings
from sysmon.operator import manifests, rules
from sysmon.operator.compare import Step, plan
from sysmon.operator.config_client import ConfigClient, Refused, Unreachable
from sysmon.operator.fleet_spec import FleetSpec
from sysmon.operator.kube import Kube, KubeError
from sysmon.operator.settings import DEFAULT_SERVICE_ACCOUNT, OperatorIdentity
from sysmon.operator.status import Rollout, daemonset_rollout, deployment_rollout, fleet_status, now_rfc3339
from sysmon.pb.v1 import config_pb2

FLEETS = (manifests.GROUP, manifests.VERSION, "monitoredfleets")
RULES = (manifests.GROUP, manifests.VERSION, "alertrules")
# kopf's own bookkeeping (progress, last-handled spec) goes into annotations under our domain,
# not into status, which stays what users read.
ANNOTATION_PREFIX = "operator.sysmon.dev"
FINALIZER = "sysmon.dev/alertrule-cleanup"


@dataclass
class OperatorContext:
    settings: OperatorSettings
    kube: Kube
    config: ConfigClient
    now: Callable[[], str] = field(default=now_rfc3339)
    # Who the operator is to the fleets' aggregators (run() reads it from SYSMON_SERVICE_ACCOUNT).
    identity: OperatorIdentity = field(
        default_factory=lambda: OperatorIdentity(service_account=DEFAULT_SERVICE_ACCOUNT))


def _ctx(memo: Any) -> OperatorContext:
    return memo["ctx"]  # type: ignore[no-any-return]


# --- MonitoredFleet ----------------------------------------------------------------------------


@dataclass
class FleetResult:
    status: dict[str, Any]
    steps: list[Step]
    # (reason, message, retryable) when the reconcile did not complete.
    error: tuple[str, str, bool] | None = None

    @property
    def changes(self) -> list[Step]:
        return [s for s in self.steps if s.op in ("create", "update", "delete")]


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    # A rule across fields (a model validator) has no field of its own: its message names them.
    where = ".".join(["spec", *(str(p) for p in err["loc"])])
    return f"{where}: {err['msg'].removeprefix('Value error, ')}"


def reconcile_fleet(kube: Kube, *, name: str, namespace: str, uid: str, generation: int,
                    spec: Mapping[str, Any], previous_status: Mapping[str, Any] | None, default_image: str,
                    now: str, operator_account: str | None = None) -> FleetResult:
    """Bring the fleet's children to what its spec says; return the status that results.

    `operator_account` (namespace/name) is the ServiceAccount the fleet's aggregator takes as admin.
    """
    error: tuple[str, str, bool] | None = None
    steps: list[Step] = []
    try:
        parsed: FleetSpec | None = FleetSpec.model_validate(dict(spec))
    except ValidationError as e:
        parsed, error = None, ("InvalidSpec", _first_error(e), False)

    # The children's names do not depend on the spec, so status can be reported even for a bad spec.
    fleet = manifests.Fleet(name, namespace, uid, parsed or FleetSpec.model_construct(), default_image,
                            operator_account)
    live: dict[tuple[str, str], dict[str, Any] | None] = {}
    try:
        for kind, child in manifests.possible_children(fleet):
            live[kind, child] = kube.get(kind, namespace, child)
        if parsed is not None:
            steps = plan(manifests.desired_children(fleet), live, uid)
            for step in steps:
                if step.op in ("create", "update"):
                    assert step.manifest is not None
                    live[step.kind, step.name] = kube.apply(step.manifest)
                elif step.op == "delete":
                    kube.delete(step.kind, namespace, step.name)
                    live[step.kind, step.name] = None
                elif step.op == "conflict" and error is None:
                    error = ("Conflict", step.reason, True)
    except KubeError as e:
        error = ("ApplyFailed", str(e), e.retryable)

    enabled = manifests.enabled_components(parsed) if parsed else ["collector", "aggregator"]

    def live_child(kind: str, component: str) -> dict[str, Any] | None:
        return live.get((kind, manifests.child_name(fleet, component)))

    rollouts: list[Rollout] = [daemonset_rollout("collector", live_child("DaemonSet", "collector"))]
    rollouts += [deployment_rollout(c, live_child("Deployment", c)) for c in enabled[1:]]
    status = fleet_status(generation=generation, rollouts=rollouts,
                          error=(error[0], error[1]) if error else None, previous=previous_status, now=now)
    return FleetResult(status, steps, error)


def fleet_reconcile(name: str, namespace: str, uid: str, meta: Mapping[str, Any], spec: Mapping[str, Any],
                    status: Mapping[str, Any], patch: kopf.Patch, memo: Any, logger: logging.Logger | Any,
                    retry: int = 0, **_: Any) -> None:
    """create / update / resume / timer: one idempotent reconcile."""
    ctx = _ctx(memo)
    result = reconcile_fleet(ctx.kube, name=name, namespace=namespace, uid=uid,
                             generation=int(meta.get("generation") or 1), spec=spec,
                             previous_status=status, default_image=ctx.settings.image, now=ctx.now(),
                             operator_account=ctx.identity.principal(ctx.settings.served_namespace()))
    patch.status.update(result.status)
    for step in result.changes:
        logger.info("%s %s %s: %s", step.op, step.kind, step.name, step.reason)
    if result.error is not None:
        reason, message, retryable = result.error
        if retryable:
            raise kopf.TemporaryError(f"{reason}: {message}", delay=retry_delay(retry, ctx.settings))
        raise kopf.PermanentError(f"{reason}: {message}")


# --- AlertRule ---------------------------------------------------------------------------------


def retry_delay(retry: int, settings: OperatorSettings) -> float:
    # OTLP-style: 1, 2, 4, ... seconds with jitter, capped; kopf counts the retries for us.
    return Backoff(initial=1.0, maximum=settings.max_backoff.total_seconds(), attempt=retry).next_delay()


async def rule_push(name: str, namespace: str, meta: Mapping[str, Any], spec: Mapping[str, Any],
                    status: Mapping[str, Any], patch: kopf.Patch, memo: Any, logger: logging.Logger | Any,
                    retry: int = 0, **_: Any) -> None:
    """create / update / resume: validate, then ConfigService.Apply with the generation as version."""
    ctx = _ctx(memo)
    generation = int(meta.get("generation") or 1)
    now = ctx.now()
    try:
        resource = rules.to_resource(namespace, name, generation, spec)
    except rules.InvalidRule as e:
        patch.status.update(rules.invalid_status(generation=generation, error=str(e), now=now, previous=status))
        raise kopf.PermanentError(str(e)) from e
    try:
        resp = await ctx.config.apply(config_pb2.ApplyRequest(upserts=[resource]))
    except Unreachable as e:
        delay = retry_delay(retry, ctx.settings)
        patch.status.update(rules.pending_status(generation=generation, error=str(e), retry_in=delay, now=now,
                                                 previous=status))
        raise kopf.TemporaryError(str(e), delay=delay) from e
    except Refused as e:
        patch.status.update(rules.invalid_status(generation=generation, error=str(e), now=now, previous=status))
        raise kopf.PermanentError(str(e)) from e
    if resp.stale:
        patch.status.update(rules.stale_status(generation=generation, now=now, previous=status))
        raise kopf.PermanentError(f"aggregator holds a newer generation of {rules.config_name(namespace, name)}")
    patch.status.update(rules.pushed_status(generation=generation, version=resp.version,
                                            address=ctx.config.address, now=now, previous=status))
    logger.info("pushed generation %d as configuration version %d", generation, resp.version)


async def rule_remove(name: str, namespace: str, patch: kopf.Patch, memo: Any, logger: logging.Logger | Any,
                      retry: int = 0, **_: Any) -> None:
    """delete: remove the rule from the aggregator before the finalizer lets the object go."""
    ctx = _ctx(memo)
    try:
        resp = await ctx.config.apply(config_pb2.ApplyRequest(deletes=[rules.to_key(namespace, name)]))
    except Unreachable as e:
        delay = retry_delay(retry, ctx.settings)
        patch.status.update({"state": "Deleting", "lastError": f"{e}; retrying in {delay:.0f}s"})
        raise kopf.TemporaryError(str(e), delay=delay) from e
    logger.info("removed from the aggregator (configuration version %d)", resp.version)


# --- wiring ------------------------------------------------------------------------------------


def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Startup: where kopf keeps its state, and the restricted mode that needs no cluster-wide RBAC."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration")
    # One namespace, named up front: no need to list namespaces or watch CRDs cluster-wide.
    settings.scanning.disabled = True
    # Events only for what a person must see; every handler log line would be an API write.
    settings.posting.level = logging.WARNING


def register(registry: kopf.OperatorRegistry, settings: OperatorSettings) -> kopf.OperatorRegistry:
    kopf.on.login(registry=registry)(kopf.login_via_client)
    kopf.on.startup(registry=registry)(configure)
    for on in (kopf.on.create, kopf.on.update, kopf.on.resume):
        on(*FLEETS, registry=registry, id="reconcile")(fleet_reconcile)
        on(*RULES, registry=registry, id="push")(rule_push)
    # Drift correction and status: compare-then-apply, so an idle fleet costs only GETs.
    kopf.timer(*FLEETS, interval=settings.resync.total_seconds(), initial_delay=settings.resync.total_seconds(),
               registry=registry, id="resync")(fleet_reconcile)
    kopf.on.delete(*RULES, registry=registry, id="remove")(rule_remove)
    return registry
