"""AlertRule handlers, called as kopf calls them, against a real aggregator over real gRPC (with
PostgreSQL and Redis): the push with the generation as version, its status, retries while the
aggregator is away, refusal of invalid rules, re-push on resume, removal on delete, the token."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import jsonschema
import kopf
import pytest

from sysmon.aggregator.server import Aggregator
from sysmon.core.config_model import spec_from_struct
from sysmon.core.embedded import free_port
from sysmon.core.settings import OperatorSettings
from sysmon.operator.config_client import ConfigClient
from sysmon.operator.handlers import OperatorContext, rule_push, rule_remove
from sysmon.pb.v1 import config_pb2, config_pb2_grpc
from tests.conftest import AggregatorFactory
from tests.fake_kube import FakeKube
from tests.helpers import wait_for
from tests.k8s_schemas import EXAMPLES, load_docs, schema_of, to_json_schema

NS = "monitoring"


class Operator:
    """The operator's side: a context as `sysmon operator` builds it, and an AlertRule object."""

    def __init__(self, address: str, token: str | None = None, **settings: Any):
        self.settings = OperatorSettings(namespace=NS, aggregator=address, token=token, push_timeout="2s",
                                         **settings)
        self.client = ConfigClient(self.settings)
        self.memo = kopf.Memo(ctx=OperatorContext(self.settings, FakeKube(), self.client))

    async def push(self, rule: dict[str, Any], status: dict[str, Any], retry: int = 0) -> None:
        patch = kopf.Patch()
        try:
            await rule_push(name=rule["metadata"]["name"], namespace=NS, meta=rule["metadata"], spec=rule["spec"],
                            status=status, patch=patch, memo=self.memo, logger=logging.getLogger("test"),
                            retry=retry)
        finally:
            _merge(status, patch.status)

    async def remove(self, rule: dict[str, Any], status: dict[str, Any], retry: int = 0) -> None:
        patch = kopf.Patch()
        try:
            await rule_remove(name=rule["metadata"]["name"], namespace=NS, patch=patch, memo=self.memo,
                              logger=logging.getLogger("test"), retry=retry)
        finally:
            _merge(status, patch.status)


def _merge(status: dict[str, Any], patch: Any) -> None:
    for k, v in patch.items():
        if v is None:
            status.pop(k, None)
        else:
            status[k] = v


def example(name: str, generation: int = 1) -> dict[str, Any]:
    (doc,) = load_docs(EXAMPLES / name)
    doc["metadata"]["generation"] = generation
    return doc


async def snapshot(address: str, token: str | None = None) -> config_pb2.ConfigSnapshot:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    async with grpc.aio.insecure_channel(address) as channel:
        call = config_pb2_grpc.ConfigServiceStub(channel).Watch(config_pb2.WatchRequest(kinds=["AlertRule"]),
                                                                metadata=metadata)
        try:
            async with asyncio.timeout(10):
                return await call.read()
        finally:
            call.cancel()


def rules_in(snap: config_pb2.ConfigSnapshot) -> dict[str, tuple[int, dict[str, Any]]]:
    return {r.name: (r.generation, spec_from_struct(r.spec)) for r in snap.resources}


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


@pytest.fixture
async def aggregator(start_aggregator: AggregatorFactory) -> Aggregator:
    return await start_aggregator()


@pytest.fixture
async def operator(aggregator: Aggregator) -> AsyncIterator[Operator]:
    op = Operator(aggregator.address)
    yield op
    await op.client.close()


async def test_a_rule_is_pushed_with_its_generation_and_the_status_says_so(
    aggregator: Aggregator, operator: Operator
) -> None:
    rule, status = example("alertrule-root-disk.yaml"), {}
    await operator.push(rule, status)

    snap = await snapshot(aggregator.address)
    generation, spec = rules_in(snap)["monitoring/root-disk-full"]
    assert generation == 1
    assert spec["condition"] == {"op": ">", "threshold": 0.9, "resolveThreshold": 0.85}
    assert spec["actions"][0] == {"webhook": {"url": "http://receiver:9000/hook"}}
    assert status["state"] == "Pushed"
    assert status["configVersion"] == snap.version
    assert status["pushedGeneration"] == status["observedGeneration"] == 1
    assert status["aggregator"] == aggregator.address
    assert "lastError" not in status
    assert condition(status, "Ready")["status"] == "True"
    jsonschema.validate(status, to_json_schema(schema_of("AlertRule")["properties"]["status"], False))

    # kubectl edit: a new generation replaces the old one.
    rule["spec"]["condition"]["threshold"] = 0.95
    rule["metadata"]["generation"] = 2
    await operator.push(rule, status)
    snap2 = await snapshot(aggregator.address)
    generation, spec = rules_in(snap2)["monitoring/root-disk-full"]
    assert (generation, spec["condition"]["threshold"]) == (2, 0.95)
    assert status["configVersion"] == snap2.version > snap.version
    assert status["pushedGeneration"] == 2


async def test_pushing_the_same_generation_again_changes_nothing(aggregator: Aggregator, operator: Operator) -> None:
    rule, status = example("alertrule-cpu-busy.yaml"), {}
    await operator.push(rule, status)
    version = status["configVersion"]
    await operator.push(rule, status)  # e.g. the resume after a restart
    assert status["configVersion"] == version
    assert (await snapshot(aggregator.address)).version == version


async def test_while_the_aggregator_is_away_the_push_is_retried_with_backoff(
    start_aggregator: AggregatorFactory,
) -> None:
    port = free_port()
    op = Operator(f"127.0.0.1:{port}")
    rule, status = example("alertrule-memory-low.yaml"), {}
    try:
        delays = []
        for retry in range(3):
            with pytest.raises(kopf.TemporaryError) as e:
                await op.push(rule, status, retry=retry)
            delays.append(e.value.delay)
            assert status["state"] == "Pending"
            assert f"127.0.0.1:{port}" in status["lastError"]
            assert "UNAVAILABLE" in status["lastError"]
            ready = condition(status, "Ready")
            assert (ready["status"], ready["reason"]) == ("False", "AggregatorUnavailable")
        assert delays[0] < delays[2], delays  # exponential, with jitter
        assert all(d <= op.settings.max_backoff.total_seconds() * 1.2 for d in delays)

        # The aggregator comes up at that address; kopf keeps retrying, and a retry gets through
        # once gRPC has reconnected (its reconnect backoff is capped at 5 s).
        agg = await start_aggregator(listen=f"127.0.0.1:{port}")
        retry = 3

        async def pushed() -> bool:
            nonlocal retry
            try:
                await op.push(rule, status, retry=retry)
            except kopf.TemporaryError:
                retry += 1
                return False
            return True

        await wait_for(pushed, within=20, interval=0.2, message="the push after the aggregator came up")
        assert status["state"] == "Pushed"
        assert "lastError" not in status
        assert "monitoring/memory-low" in rules_in(await snapshot(agg.address))
    finally:
        await op.client.close()


async def test_an_invalid_rule_is_refused_with_the_field_and_never_pushed(
    aggregator: Aggregator, operator: Operator
) -> None:
    # The CRD cannot check template syntax or label-name syntax of map keys; the model can.
    rule, status = example("alertrule-cpu-busy.yaml"), {}
    rule["spec"]["labels"] = {"team-name": "platform"}
    with pytest.raises(kopf.PermanentError):
        await operator.push(rule, status)
    assert status["state"] == "Invalid"
    assert "spec.labels" in status["lastError"]
    assert "team-name" in status["lastError"]
    assert condition(status, "Valid")["status"] == "False"
    assert rules_in(await snapshot(aggregator.address)) == {}


async def test_resume_pushes_every_rule_again(aggregator: Aggregator, operator: Operator) -> None:
    names = ["alertrule-root-disk.yaml", "alertrule-cpu-busy.yaml", "alertrule-memory-low.yaml"]
    statuses: dict[str, dict[str, Any]] = {n: {} for n in names}
    for n in names:
        await operator.push(example(n), statuses[n])
    # The aggregator's configuration is lost (e.g. a new database) while the operator is down ...
    async with grpc.aio.insecure_channel(aggregator.address) as channel:
        await config_pb2_grpc.ConfigServiceStub(channel).Apply(config_pb2.ApplyRequest(deletes=[
            config_pb2.ResourceKey(kind="AlertRule", name=name) for name in rules_in(await snapshot(aggregator.address))
        ]))
    assert rules_in(await snapshot(aggregator.address)) == {}

    # ... and a new operator process resumes every AlertRule it finds.
    restarted = Operator(aggregator.address)
    try:
        for n in names:
            await restarted.push(example(n), statuses[n])
    finally:
        await restarted.client.close()
    assert set(rules_in(await snapshot(aggregator.address))) == {
        "monitoring/root-disk-full", "monitoring/cpu-busy", "monitoring/memory-low"}
    assert all(s["state"] == "Pushed" for s in statuses.values())


async def test_deleting_a_rule_removes_it_from_the_aggregator(
    start_aggregator: AggregatorFactory, aggregator: Aggregator, operator: Operator
) -> None:
    rule, status = example("alertrule-root-disk.yaml"), {}
    await operator.push(rule, status)
    await operator.remove(rule, status)
    assert rules_in(await snapshot(aggregator.address)) == {}

    # With the aggregator away, the finalizer holds the object until the removal gets through.
    away = Operator(f"127.0.0.1:{free_port()}")
    try:
        with pytest.raises(kopf.TemporaryError):
            await away.remove(rule, status)
        assert status["state"] == "Deleting"
    finally:
        await away.client.close()


async def test_the_operator_sends_the_token_and_a_wrong_one_is_retried_not_dropped(
    start_aggregator: AggregatorFactory,
) -> None:
    agg = await start_aggregator(token="s3cret-token")
    good, bad = Operator(agg.address, token="s3cret-token"), Operator(agg.address, token="wrong")
    try:
        status: dict[str, Any] = {}
        with pytest.raises(kopf.TemporaryError):
            await bad.push(example("alertrule-cpu-busy.yaml"), status)
        assert "UNAUTHENTICATED" in status["lastError"]
        assert "s3cret" not in status["lastError"]
        await good.push(example("alertrule-cpu-busy.yaml"), status)
        assert status["state"] == "Pushed"
        assert "monitoring/cpu-busy" in rules_in(await snapshot(agg.address, token="s3cret-token"))
    finally:
        await good.client.close()
        await bad.client.close()


# --- the operator's identity: its ServiceAccount token file first, the fleet token behind it ------


async def test_the_operator_presents_its_token_file_as_it_is_at_each_push(
    start_aggregator: AggregatorFactory, tmp_path: Any
) -> None:
    """The kubelet rewrites the projected token in place: each push presents what the file holds then."""
    agg = await start_aggregator(token="s3cret-token")
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    op = Operator(agg.address, token_file=str(token_file))
    rule, status = example("alertrule-cpu-busy.yaml"), {}
    try:
        await op.push(rule, status)
        assert status["state"] == "Pushed"

        token_file.write_text("expired-token")
        rule["metadata"]["generation"] = 2
        with pytest.raises(kopf.TemporaryError):
            await op.push(rule, status)
        assert status["state"] == "Pending"
        assert "UNAUTHENTICATED" in status["lastError"]

        token_file.write_text("s3cret-token")
        await op.push(rule, status, retry=1)
        assert (status["state"], status["pushedGeneration"]) == ("Pushed", 2)
    finally:
        await op.client.close()


async def test_an_aggregator_that_refuses_the_service_account_token_gets_the_fleet_token(
    start_aggregator: AggregatorFactory, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A fleet in identity mode fleetToken: its aggregator reviews no ServiceAccount tokens, and the
    operator's pushes still get through, saying once (not at every push) which token it fell back to."""
    agg = await start_aggregator(token="s3cret-token")
    token_file = tmp_path / "token"
    token_file.write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJvcGVyYXRvciJ9.c2ln")
    op = Operator(agg.address, token="s3cret-token", token_file=str(token_file))
    statuses: dict[str, dict[str, Any]] = {}
    try:
        with caplog.at_level(logging.WARNING, logger="sysmon.operator.config_client"):
            for name in ("alertrule-cpu-busy.yaml", "alertrule-memory-low.yaml"):
                await op.push(example(name), statuses.setdefault(name, {}))
        assert all(s["state"] == "Pushed" for s in statuses.values())
        assert set(rules_in(await snapshot(agg.address, token="s3cret-token"))) == {
            "monitoring/cpu-busy", "monitoring/memory-low"}
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, warnings
        assert f"refused the ServiceAccount token in {token_file}" in warnings[0]
        assert "trying the fleet token" in warnings[0]
        assert "s3cret" not in warnings[0]
    finally:
        await op.client.close()


async def test_an_unreadable_token_file_falls_back_and_a_refused_fleet_token_is_retried(
    start_aggregator: AggregatorFactory, tmp_path: Any
) -> None:
    agg = await start_aggregator(token="s3cret-token")
    missing = Operator(agg.address, token="s3cret-token", token_file=str(tmp_path / "not-mounted"))
    neither = Operator(agg.address, token="wrong", token_file=str(tmp_path / "not-mounted"))
    try:
        status: dict[str, Any] = {}
        await missing.push(example("alertrule-root-disk.yaml"), status)
        assert status["state"] == "Pushed"
        status = {}
        with pytest.raises(kopf.TemporaryError):
            await neither.push(example("alertrule-root-disk.yaml"), status)
        assert status["state"] == "Pending"
        assert "UNAUTHENTICATED" in status["lastError"]
    finally:
        await missing.client.close()
        await neither.client.close()
