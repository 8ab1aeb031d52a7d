"""sysmon.operator.kube over the official client, against a small HTTP server standing in for the
API server on loopback: the paths, the server-side-apply request (content type, field manager,
force), 404 as "absent", and errors sorted into retryable or not."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from sysmon.operator import manifests
from sysmon.operator.fleet_spec import FleetSpec
from sysmon.operator.kube import ClientKube, KubeError

REF = {"secretKeyRef": {"name": "s", "key": "k"}}


class FakeApiServer(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.objects: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, dict[str, list[str]], str, Any]] = []
        self.forbidden: set[str] = set()


class Handler(BaseHTTPRequestHandler):
    server: FakeApiServer

    def log_message(self, *args: Any) -> None:
        pass

    def _reply(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.server.requests.append((method, url.path, parse_qs(url.query), self.headers.get("Content-Type", ""),
                                     body))
        if url.path in self.server.forbidden:
            return self._reply(403, {"kind": "Status", "message": "daemonsets.apps is forbidden: no patch"})
        if method == "GET":
            obj = self.server.objects.get(url.path)
            return self._reply(200, obj) if obj else self._reply(404, {"kind": "Status", "reason": "NotFound"})
        if method == "PATCH":
            self.server.objects[url.path] = {**body, "status": {"observedGeneration": 1}}
            return self._reply(200, self.server.objects[url.path])
        if method == "DELETE":
            self.server.objects.pop(url.path, None)
            return self._reply(200, {"kind": "Status", "status": "Success"})
        return self._reply(405, {})

    def do_GET(self) -> None:
        self._handle("GET")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")


@pytest.fixture
def server() -> Iterator[FakeApiServer]:
    srv = FakeApiServer()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def kube(server: FakeApiServer) -> ClientKube:
    from kubernetes import client

    config = client.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
    return ClientKube(client.ApiClient(config))


def test_get_apply_delete_reach_the_right_paths_with_server_side_apply(server: FakeApiServer,
                                                                       kube: ClientKube) -> None:
    fleet = manifests.Fleet("prod", "mon", "uid", FleetSpec.model_validate({"postgres": REF, "redis": REF,
                                                                            "token": REF}))
    ds = manifests.collector_daemonset(fleet)
    path = "/apis/apps/v1/namespaces/mon/daemonsets/prod-collector"

    assert kube.get("DaemonSet", "mon", "prod-collector") is None
    live = kube.apply(ds)
    assert live["status"] == {"observedGeneration": 1}
    assert live["spec"] == ds["spec"]
    method, p, query, content_type, body = server.requests[-1]
    assert (method, p) == ("PATCH", path)
    assert content_type == "application/apply-patch+yaml"
    assert query == {"fieldManager": ["sysmon-operator"], "force": ["true"]}
    assert body == ds
    assert kube.get("DaemonSet", "mon", "prod-collector") == live

    for kind, prefix in (("ServiceAccount", "/api/v1/namespaces/mon/serviceaccounts/"),
                         ("ConfigMap", "/api/v1/namespaces/mon/configmaps/"),
                         ("Service", "/api/v1/namespaces/mon/services/"),
                         ("Deployment", "/apis/apps/v1/namespaces/mon/deployments/")):
        kube.get(kind, "mon", "x")
        assert server.requests[-1][1] == prefix + "x"

    kube.delete("DaemonSet", "mon", "prod-collector")
    assert server.requests[-1][:2] == ("DELETE", path)
    assert kube.get("DaemonSet", "mon", "prod-collector") is None
    kube.delete("DaemonSet", "mon", "prod-collector")  # already gone: fine


def test_a_forbidden_call_is_an_error_worth_no_retry_and_says_why(server: FakeApiServer, kube: ClientKube) -> None:
    server.forbidden.add("/apis/apps/v1/namespaces/mon/daemonsets/x")
    with pytest.raises(KubeError) as e:
        kube.get("DaemonSet", "mon", "x")
    assert not e.value.retryable
    assert "403" in str(e.value)
    assert "forbidden: no patch" in str(e.value)


def test_an_unreachable_api_server_is_retryable() -> None:
    import socket

    from kubernetes import client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = client.Configuration(host=f"http://127.0.0.1:{port}")
    config.retries = 0
    kube = ClientKube(client.ApiClient(config))
    with pytest.raises(KubeError) as e:
        kube.get("ConfigMap", "mon", "x")
    assert e.value.retryable


def test_a_fleets_service_account_is_server_side_applied_and_read_back(server: FakeApiServer,
                                                                       kube: ClientKube) -> None:
    fleet = manifests.Fleet("prod", "mon", "uid", FleetSpec.model_validate({"postgres": REF, "redis": REF,
                                                                            "token": REF}))
    sa = manifests.service_account(fleet, "collector")
    live = kube.apply(sa)
    method, path, query, content_type, body = server.requests[-1]
    assert (method, path) == ("PATCH", "/api/v1/namespaces/mon/serviceaccounts/prod-collector")
    assert content_type == "application/apply-patch+yaml"
    assert query == {"fieldManager": ["sysmon-operator"], "force": ["true"]}
    assert body == sa
    assert live["automountServiceAccountToken"] is False
    assert kube.get("ServiceAccount", "mon", "prod-collector") == live
