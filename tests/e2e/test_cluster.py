"""sysmon on a real cluster (kind via Tilt): the dev overlay applied, the operator up, collectors on
every node reporting through the aggregator to the gateway with their own ServiceAccount tokens
(reviewed by the aggregator, the only account that may), an AlertRule pushed by the operator as
admin and firing, and the operator undoing a deleted child. Runs only when KUBECONFIG points at a reachable cluster.

    kind create cluster --name sysmon && tilt up      # or: docker build -t sysmon:dev . &&
    KUBECONFIG=~/.kube/config make test ARGS=tests/e2e/test_cluster.py   # kind load docker-image sysmon:dev
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.k8s_schemas import ROOT, kubectl

NS = "sysmon"
FLEET = "sysmon"
RULE = "e2e-always-firing"
DEADLINE = 300.0


def _cluster_or_skip() -> str:
    config = os.environ.get("KUBECONFIG")
    if not config:
        pytest.skip("KUBECONFIG is not set: the cluster suite needs a cluster (kind create cluster; tilt up)")
    if not all(Path(p).is_file() for p in config.split(os.pathsep) if p):
        pytest.skip(f"KUBECONFIG={config} names no kubeconfig file")
    exe = kubectl()
    if exe is None:
        pytest.skip("kubectl is not installed (make test installs it)")
    probe = subprocess.run([exe, "version", "--request-timeout=5s", "-o", "json"], capture_output=True, text=True,
                           check=False)
    if probe.returncode != 0:
        pytest.skip(f"the cluster in KUBECONFIG={config} does not answer: {probe.stderr.strip()[:200]}")
    return exe


@pytest.fixture(scope="module")
def k() -> Callable[..., str]:
    exe = _cluster_or_skip()

    def run(*args: str, check: bool = True, stdin: str | None = None) -> str:
        out = subprocess.run([exe, *args], capture_output=True, text=True, input=stdin, check=False, timeout=120)
        if check and out.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {out.stderr}")
        return out.stdout

    return run


def wait(predicate: Callable[[], Any], message: str, within: float = DEADLINE, every: float = 2.0) -> Any:
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (AssertionError, OSError, ValueError) as e:
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {within:.0f}s waiting for {message} (last: {last!r})")


def get(k: Callable[..., str], *what: str) -> dict[str, Any]:
    return json.loads(k("get", "-n", NS, *what, "-o", "json"))  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def installed(k: Callable[..., str]) -> None:
    """The dev overlay, applied unless Tilt (or an earlier run) already did: Tilt's image tag stays."""
    if k("get", "-n", NS, "monitoredfleet", FLEET, "--ignore-not-found", "-o", "name", check=False).strip():
        return
    # CRDs first: the MonitoredFleet in the overlay can only be created once they are established.
    k("apply", "--server-side", "-k", str(ROOT / "crds"))
    k("wait", "--for=condition=Established", "--timeout=60s", "crd/monitoredfleets.sysmon.dev",
      "crd/alertrules.sysmon.dev", "crd/kopfpeerings.kopf.dev")
    k("apply", "--server-side", "-k", str(ROOT / "kustomize" / "overlays" / "dev"))


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), {})


@pytest.fixture(scope="module")
def ready_fleet(k: Callable[..., str], installed: None) -> dict[str, Any]:
    k("rollout", "status", "-n", NS, "deployment/sysmon-operator", f"--timeout={int(DEADLINE)}s")

    def ready() -> dict[str, Any] | None:
        fleet = get(k, "monitoredfleet", FLEET)
        ok = (condition(fleet, "Ready").get("status") == "True"
              and fleet["status"].get("observedGeneration") == fleet["metadata"]["generation"])
        return fleet if ok else None

    return wait(ready, "the fleet's Ready condition")  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def gateway(k: Callable[..., str], ready_fleet: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(base URL, token) of the fleet's gateway through kubectl port-forward."""
    secret = get(k, "secret", "sysmon-token")
    token = base64.b64decode(secret["data"]["token"]).decode()
    exe = kubectl()
    assert exe is not None
    proc = subprocess.Popen([exe, "port-forward", "-n", NS, f"service/{FLEET}-gateway", ":8080"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert m, f"port-forward said {line!r}"
        yield f"http://127.0.0.1:{m.group(1)}", token
    finally:
        proc.terminate()
        proc.wait(10)


def api(gateway: tuple[str, str], path: str) -> Any:
    base, token = gateway
    req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def test_the_fleet_reports_every_component_and_node(k: Callable[..., str], ready_fleet: dict[str, Any]) -> None:
    nodes = json.loads(k("get", "nodes", "-o", "json"))["items"]
    status = ready_fleet["status"]
    assert status["collectors"]["desired"] == len(nodes)
    assert status["collectors"]["ready"] == len(nodes)
    assert status["aggregator"]["ready"] >= 1
    assert condition(ready_fleet, "Degraded")["status"] == "False"
    # The children are owned by the fleet (deleting it deletes them).
    ds = get(k, "daemonset", f"{FLEET}-collector")
    assert ds["metadata"]["ownerReferences"][0]["uid"] == ready_fleet["metadata"]["uid"]


def test_collectors_hold_their_own_token_and_not_the_fleets(k: Callable[..., str], ready_fleet: dict[str, Any]) -> None:
    """identity mode serviceAccountToken (the default): a collector's pod has a projected token for
    sysmon.dev and no fleet token, so the next test's hosts reporting means TokenReview let them in."""
    assert ready_fleet["spec"]["identity"]["mode"] == "serviceAccountToken"
    pods = json.loads(k("get", "pods", "-n", NS, "-l", "app.kubernetes.io/component=collector,"
                        f"app.kubernetes.io/instance={FLEET}", "-o", "json"))["items"]
    assert pods
    for pod in pods:
        spec = pod["spec"]
        assert spec["serviceAccountName"] == f"{FLEET}-collector"
        (container,) = spec["containers"]
        assert "SYSMON_TOKEN" not in {e["name"] for e in container.get("env", [])}
        sources = [s["serviceAccountToken"] for v in spec["volumes"] for s in v.get("projected", {}).get("sources", [])
                   if "serviceAccountToken" in s]
        assert [s["audience"] for s in sources] == ["sysmon.dev"]
        # Only the audience-bound token: the API server's own is not mounted.
        assert not [m for m in container["volumeMounts"] if m["mountPath"].startswith("/var/run/secrets/kubernetes.io")]


def test_only_the_aggregator_may_review_tokens(k: Callable[..., str], ready_fleet: dict[str, Any]) -> None:
    def can_review(account: str) -> str:
        return k("auth", "can-i", "create", "tokenreviews.authentication.k8s.io",
                 f"--as=system:serviceaccount:{NS}:{account}", check=False).strip()

    assert can_review(f"{FLEET}-aggregator") == "yes"
    for account in (f"{FLEET}-collector", f"{FLEET}-alerts", "sysmon-operator"):
        assert can_review(account) == "no", account


def test_collectors_on_every_node_report_through_to_the_gateway(
    k: Callable[..., str], gateway: tuple[str, str]
) -> None:
    nodes = {n["metadata"]["name"] for n in json.loads(k("get", "nodes", "-o", "json"))["items"]}

    def all_reporting() -> bool:
        hosts = api(gateway, "/api/v1/hosts")["hosts"]
        up = {h.get("host_id") or h.get("host") or h.get("id") for h in hosts if h.get("status") == "up"}
        return nodes <= up

    wait(all_reporting, f"hosts {sorted(nodes)} up in /api/v1/hosts")


def test_an_alert_rule_is_pushed_and_fires(k: Callable[..., str], gateway: tuple[str, str]) -> None:
    rule = {
        "apiVersion": "sysmon.dev/v1alpha1", "kind": "AlertRule",
        "metadata": {"name": RULE, "namespace": NS},
        # Every host has at least one CPU: this fires as soon as it is evaluated.
        "spec": {"metric": "system.cpu.logical.count", "hostSelector": {"matchLabels": {"cluster": "kind"}},
                 "window": "10s", "condition": {"op": ">", "threshold": 0}, "for": "0s", "severity": "info",
                 "annotations": {"summary": "{{ host }} has CPUs"}, "actions": [{"log": {"level": "info"}}]},
    }
    k("apply", "-f", "-", stdin=json.dumps(rule))
    try:
        def pushed() -> dict[str, Any] | None:
            obj = get(k, "alertrule", RULE)
            st = obj.get("status", {})
            return obj if st.get("state") == "Pushed" and st.get("pushedGeneration") == obj["metadata"][
                "generation"] else None

        obj = wait(pushed, "the AlertRule's status to say Pushed", within=120)
        assert obj["status"]["configVersion"] >= 1
        assert condition(obj, "Ready")["status"] == "True"

        def firing() -> bool:
            alerts = api(gateway, f"/api/v1/alerts?state=firing&rule={quote(NS + '/' + RULE)}")["alerts"]
            return len(alerts) >= 1

        wait(firing, f"a firing alert of rule {NS}/{RULE} in /api/v1/alerts", within=180)
    finally:
        k("delete", "-n", NS, "alertrule", RULE, "--ignore-not-found", "--wait=true", "--timeout=120s")
    # The finalizer let go only after the rule was removed from the aggregator.
    assert not k("get", "-n", NS, "alertrule", RULE, "--ignore-not-found", "-o", "name", check=False).strip()


def test_a_deleted_child_is_recreated(k: Callable[..., str], ready_fleet: dict[str, Any]) -> None:
    before = get(k, "service", f"{FLEET}-aggregator")["metadata"]["uid"]
    k("delete", "-n", NS, "service", f"{FLEET}-aggregator", "--wait=true")

    def recreated() -> bool:
        svc = json.loads(k("get", "-n", NS, "service", f"{FLEET}-aggregator", "--ignore-not-found", "-o", "json",
                           check=False) or "{}")
        return bool(svc) and svc["metadata"]["uid"] != before

    wait(recreated, "the operator to recreate the aggregator Service", within=120)
