"""Who may do what, over real gRPC and HTTP: the fleet token, per-host and scoped sysmon tokens,
and Kubernetes ServiceAccount tokens reviewed by an API server.

A Kubernetes API server cannot run here: the TokenReview tests talk to a stand-in that answers
the real endpoints (`POST /apis/authentication.k8s.io/v1/tokenreviews`, `GET .../pods/{name}`)
with the shapes the API server documents, through the real `kubernetes` client.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import grpc
import pytest
import uvicorn
import websockets
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sysmon.core.embedded import free_port
from sysmon.core.http_server import EmbeddedServer, bind
from sysmon.core.identity import InvalidCredential, Scope, tokens
from sysmon.core.identity.kubernetes import TokenReviewer
from sysmon.pb.v1 import config_pb2, config_pb2_grpc, control_pb2, control_pb2_grpc
from tests.conftest import AggregatorFactory
from tests.gateway_helpers import running_gateway
from tests.helpers import RawClient, make_batch, running_collector, wait_for

SECRET = "a-fleet-secret-of-at-least-32-bytes!"


def bearer(token: str, scheme: str = "Bearer") -> tuple[tuple[str, str], ...]:
    return (("authorization", f"{scheme} {token}"),)


async def _status(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as e:
        return e.code()
    return grpc.StatusCode.OK


async def test_a_collector_credential_speaks_for_its_own_host_only(start_aggregator: AggregatorFactory) -> None:
    agg = await start_aggregator(token_secret=SECRET)
    web1 = tokens.issue(SECRET, Scope.COLLECTOR, host="web-1")
    # Its own host: connected, stored, acknowledged.
    async with RawClient(agg.address, "web-1", "s1", token=web1) as c:
        c.send(make_batch("web-1", "s1", 1))
        await wait_for(lambda: 1 in c.acked)
    # Another host's Hello: refused before anything is recorded.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async with RawClient(agg.address, "web-2", "s1", token=web1):
            pass
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "may not speak for host 'web-2'" in err.value.details()
    # Another host's batches on a Push stream: the stream ends.
    async with grpc.aio.insecure_channel(agg.address) as channel:
        from sysmon.pb.v1 import metrics_pb2_grpc

        async def batches() -> AsyncIterator[Any]:
            yield make_batch("web-2", "s1", 1)

        push = metrics_pb2_grpc.MetricsServiceStub(channel).Push(batches(), metadata=bearer(web1))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await push
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await agg.storage.pool.fetchval("SELECT count(*) FROM hosts WHERE host_id = 'web-2'") == 0  # type: ignore[union-attr]


async def test_scopes_on_every_method(start_aggregator: AggregatorFactory) -> None:
    agg = await start_aggregator(token="fleet-wide", token_secret=SECRET)
    collector = tokens.issue(SECRET, Scope.COLLECTOR, host="web-1")
    reader = tokens.issue(SECRET, Scope.READER, name="alerts")
    admin = tokens.issue(SECRET, Scope.ADMIN, name="operator")
    expired = tokens.issue(SECRET, Scope.ADMIN, ttl=timedelta(seconds=1), now=time.time() - 3600)
    async with grpc.aio.insecure_channel(agg.address) as channel:
        config = config_pb2_grpc.ConfigServiceStub(channel)
        apply = config.Apply
        assert await _status(apply(config_pb2.ApplyRequest(), metadata=bearer(admin))) == grpc.StatusCode.OK
        assert await _status(apply(config_pb2.ApplyRequest(), metadata=bearer("fleet-wide"))) == grpc.StatusCode.OK
        for who in (collector, reader):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await apply(config_pb2.ApplyRequest(), metadata=bearer(who))
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "Apply needs scope admin" in err.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await apply(config_pb2.ApplyRequest(), metadata=bearer(expired))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "expired" in err.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await apply(config_pb2.ApplyRequest(), metadata=bearer("dXNlcjpw", "Basic"))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "'Bearer <token>'" in err.value.details()

        async def first_snapshot(req: config_pb2.WatchRequest, token: str) -> grpc.StatusCode:
            async def read() -> None:
                async for _ in config.Watch(req, metadata=bearer(token)):
                    return
            return await _status(asyncio.wait_for(read(), 10))

        own = config_pb2.WatchRequest(kinds=["CollectorConfig"], host_id="web-1")
        assert await first_snapshot(own, collector) == grpc.StatusCode.OK
        assert await first_snapshot(config_pb2.WatchRequest(kinds=["CollectorConfig"], host_id="web-2"),
                                    collector) == grpc.StatusCode.PERMISSION_DENIED
        assert await first_snapshot(config_pb2.WatchRequest(kinds=["AlertRule"]), collector) \
            == grpc.StatusCode.PERMISSION_DENIED
        assert await first_snapshot(config_pb2.WatchRequest(kinds=["AlertRule"]), reader) == grpc.StatusCode.OK

        # A reader may not push or connect.
        control = control_pb2_grpc.ControlServiceStub(channel).Connect(metadata=bearer(reader))
        await control.write(control_pb2.AgentMessage(hello=control_pb2.Hello(host_id="web-1", session_id="s")))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await control.read()
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_collector_on_the_fleet_token_is_named_in_one_warning(
    start_aggregator: AggregatorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """An operator upgrading to per-host credentials must learn which collectors still hold the
    fleet-wide token (which may speak for any host): once, by host name; not those already moved."""
    agg = await start_aggregator(token="fleet-wide", token_secret=SECRET)

    def fleet_warnings() -> list[logging.LogRecord]:
        return [r for r in caplog.records
                if r.levelno == logging.WARNING and "fleet-wide token" in r.getMessage()]

    with caplog.at_level(logging.INFO, logger="sysmon.aggregator"):
        own = tokens.issue(SECRET, Scope.COLLECTOR, host="moved-1")
        async with running_collector(agg.address, token=own, host_id="moved-1") as moved:
            await wait_for(lambda: moved.buffer.acked >= 2, message="per-host collector stored")
            assert fleet_warnings() == []
            async with running_collector(agg.address, token="fleet-wide", host_id="legacy-1") as legacy:
                await wait_for(lambda: legacy.buffer.acked >= 3, message="fleet-token collector stored")
                await wait_for(fleet_warnings, within=5, message="the fleet-token warning")
    (warning,) = fleet_warnings()
    assert "legacy-1" in warning.getMessage()
    assert "moved-1" not in warning.getMessage()
    assert "sysmon token issue --host" in warning.getMessage()


async def test_the_scheme_is_case_insensitive_on_grpc_as_on_rest(
    start_aggregator: AggregatorFactory, pg_dsn: str, redis_url: str
) -> None:
    agg = await start_aggregator(token="s3cret")
    for scheme in ("bearer", "BEARER"):
        async with grpc.aio.insecure_channel(agg.address) as channel:
            apply = config_pb2_grpc.ConfigServiceStub(channel).Apply
            assert await _status(apply(config_pb2.ApplyRequest(), metadata=bearer("s3cret", scheme))) \
                == grpc.StatusCode.OK
    async with running_gateway(pg_dsn, redis_url, token="s3cret") as gw:
        for scheme in ("Bearer", "bearer"):
            r = await gw.http.get("/api/v1/hosts", headers={"authorization": f"{scheme} s3cret"})
            assert r.status_code == 200


async def test_the_gateway_wants_a_reader(pg_dsn: str, redis_url: str) -> None:
    reader = tokens.issue(SECRET, Scope.READER, name="grafana")
    collector = tokens.issue(SECRET, Scope.COLLECTOR, host="web-1")
    async with running_gateway(pg_dsn, redis_url, token="fleet", token_secret=SECRET) as gw:
        assert (await gw.http.get("/api/v1/hosts", headers={"authorization": f"Bearer {reader}"})).status_code == 200
        assert (await gw.http.get("/api/v1/hosts", headers={"authorization": "Bearer fleet"})).status_code == 200
        denied = await gw.http.get("/api/v1/hosts", headers={"authorization": f"Bearer {collector}"})
        assert denied.status_code == 403
        assert denied.headers["content-type"].startswith("application/problem+json")
        assert "needs scope reader" in denied.json()["detail"]
        missing = await gw.http.get("/api/v1/hosts")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == 'Bearer realm="sysmon"'

        def protocols(token: str) -> list[str]:
            raw = base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")
            return ["sysmon.v1", f"base64url.bearer.sysmon.dev.{raw}"]

        async with websockets.connect(gw.ws_url, subprotocols=protocols(reader)) as ws:
            assert json.loads(await ws.recv())["type"] == "hello"
        async with websockets.connect(gw.ws_url, subprotocols=protocols(collector)) as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4401


# --- Kubernetes ServiceAccount tokens ---------------------------------------------------------------


class FakeApiServer:
    """Answers TokenReview and pod reads as the Kubernetes API does, from tables the test fills."""

    def __init__(self) -> None:
        self.port = free_port()
        # token -> (username, audiences, extra)
        self.tokens: dict[str, tuple[str, list[str], dict[str, list[str]]]] = {}
        self.pods: dict[tuple[str, str], str] = {}  # (namespace, pod) -> node
        self.reviews = 0
        self._server: EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None

    async def _review(self, request: Request) -> Response:
        self.reviews += 1
        body = await request.json()
        assert body["kind"] == "TokenReview"
        spec = body["spec"]
        found = self.tokens.get(spec["token"])
        wanted = spec.get("audiences") or []
        status: dict[str, Any]
        if found is None or (wanted and not set(wanted) & set(found[1])):
            status = {"authenticated": False, "error": "[invalid bearer token, token audiences ... is invalid]"}
        else:
            user, auds, extra = found
            status = {"authenticated": True, "audiences": [a for a in auds if a in wanted] or auds,
                      "user": {"username": user, "uid": "u-1", "groups": ["system:serviceaccounts"],
                               "extra": extra}}
        return JSONResponse({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                             "metadata": {"creationTimestamp": None}, "spec": spec, "status": status},
                            status_code=201)

    async def _pod(self, request: Request) -> Response:
        key = (request.path_params["ns"], request.path_params["name"])
        if key not in self.pods:
            return JSONResponse({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                                 "code": 404}, status_code=404)
        return JSONResponse({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": key[1], "namespace": key[0]},
                             "spec": {"nodeName": self.pods[key], "containers": []}})

    async def start(self) -> FakeApiServer:
        app = Starlette(routes=[
            Route("/apis/authentication.k8s.io/v1/tokenreviews", self._review, methods=["POST"]),
            Route("/api/v1/namespaces/{ns}/pods/{name}", self._pod, methods=["GET"]),
        ])
        self._server = EmbeddedServer(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._task = asyncio.create_task(self._server.serve(sockets=[bind(f"127.0.0.1:{self.port}")]))
        await wait_for(lambda: self._server is not None and self._server.started, message="API server started")
        return self

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task

    def client(self) -> Any:
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = f"http://127.0.0.1:{self.port}"
        return client.ApiClient(cfg)


_EXP = int(time.time()) + 3600


def sa_token(n: int) -> str:
    """Shaped like a projected ServiceAccount token (RS256 JWT), with an expiry in an hour; the same
    string for the same n throughout the session."""
    def part(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")
    return f"{part({'alg': 'RS256', 'kid': 'k'})}.{part({'exp': _EXP, 'n': n})}.c2ln"


@pytest.fixture
async def api_server() -> AsyncIterator[FakeApiServer]:
    server = await FakeApiServer().start()
    yield server
    await server.stop()


async def test_token_review_binds_a_collector_to_its_node(api_server: FakeApiServer) -> None:
    reviewer = TokenReviewer(api_server.client(), "sysmon.dev", collectors=["sysmon/sysmon-collector"],
                             readers=["sysmon/sysmon-alerts"], admins=["sysmon/sysmon-operator"])
    node = {"authentication.kubernetes.io/node-name": ["node-a"],
            "authentication.kubernetes.io/pod-name": ["sysmon-collector-x1"]}
    api_server.tokens[sa_token(1)] = ("system:serviceaccount:sysmon:sysmon-collector", ["sysmon.dev"], node)
    api_server.tokens[sa_token(2)] = ("system:serviceaccount:sysmon:sysmon-alerts", ["sysmon.dev"], {})
    api_server.tokens[sa_token(3)] = ("system:serviceaccount:sysmon:sysmon-operator", ["sysmon.dev"], {})
    api_server.tokens[sa_token(4)] = ("system:serviceaccount:sysmon:default", ["sysmon.dev"], {})
    api_server.tokens[sa_token(5)] = ("system:serviceaccount:sysmon:sysmon-collector", ["https://kubernetes"], node)
    # Before 1.30 the review names only the pod: its node is read from the pod.
    api_server.tokens[sa_token(6)] = ("system:serviceaccount:sysmon:sysmon-collector", ["sysmon.dev"],
                                      {"authentication.kubernetes.io/pod-name": ["sysmon-collector-x2"]})
    api_server.pods[("sysmon", "sysmon-collector-x2")] = "node-b"

    p = await reviewer.principal(sa_token(1))
    assert (p.hosts, p.via) == (frozenset({"node-a"}), "kubernetes")
    assert p.allows(Scope.COLLECTOR)
    assert not p.allows(Scope.READER)
    assert (await reviewer.principal(sa_token(2))).allows(Scope.READER)
    assert (await reviewer.principal(sa_token(3))).allows(Scope.ADMIN)
    assert (await reviewer.principal(sa_token(6))).hosts == frozenset({"node-b"})
    with pytest.raises(InvalidCredential, match="is not a sysmon collector, reader or admin"):
        await reviewer.principal(sa_token(4))
    with pytest.raises(InvalidCredential, match="refused the token"):
        await reviewer.principal(sa_token(5))  # minted for the API server, not for us
    with pytest.raises(InvalidCredential, match="refused the token"):
        await reviewer.principal(sa_token(7))  # unknown
    # Reviewed once per token, then cached (reconnects cost no API call), refusals too.
    reviews = api_server.reviews
    await asyncio.gather(*(reviewer.principal(sa_token(1)) for _ in range(5)))
    with pytest.raises(InvalidCredential):
        await reviewer.principal(sa_token(4))
    assert api_server.reviews == reviews


async def test_an_aggregator_takes_service_account_tokens(
    start_aggregator: AggregatorFactory, api_server: FakeApiServer, tmp_path: Any
) -> None:
    """End to end: a collector reads its projected token from a file, the aggregator reviews it,
    and binds it to the node; a token file rotated by the kubelet is read at the next connection."""
    from sysmon.aggregator.auth import AuthInterceptor
    from sysmon.core.identity import Authenticator

    agg = await start_aggregator(token="fleet")
    reviewer = TokenReviewer(api_server.client(), "sysmon.dev", collectors=["sysmon/sysmon-collector"])
    agg.auth.authenticator = Authenticator(fleet_token="fleet", reviewer=reviewer)
    assert isinstance(agg.auth, AuthInterceptor)
    node = {"authentication.kubernetes.io/node-name": ["node-a"]}
    api_server.tokens[sa_token(1)] = ("system:serviceaccount:sysmon:sysmon-collector", ["sysmon.dev"], node)
    token_file = tmp_path / "token"
    token_file.write_text(sa_token(1))
    async with running_collector(agg.address, host_id="node-a", token_file=token_file) as c:
        await wait_for(lambda: c.buffer.acked >= 2, message="node-a acknowledged with its ServiceAccount token")
    async with running_collector(agg.address, host_id="node-b", token_file=token_file) as c:
        await wait_for(lambda: c.stats.failures >= 1, message="node-b refused")
        assert c.buffer.acked == 0
