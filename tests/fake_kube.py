"""An in-memory stand-in for the API server behind sysmon.operator.kube.Kube.

It behaves the way the reconciler must cope with: server-side apply stores what was sent plus
server defaults (and canonical quantities), metadata.generation moves only when the spec changes,
status is the controllers' (set by tests), and every write is recorded so tests can assert that
nothing was written needlessly.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from sysmon.operator.kube import KubeError

_CANONICAL = {"0.5": "500m", "0.25": "250m", "0.1": "100m", "1024Mi": "1Gi", "2048Mi": "2Gi"}


def _server_defaults(obj: dict[str, Any]) -> None:
    kind = obj["kind"]
    if kind in ("Deployment", "DaemonSet"):
        spec = obj["spec"]
        if kind == "Deployment":
            spec.setdefault("revisionHistoryLimit", 10)
            spec.setdefault("progressDeadlineSeconds", 600)
        pod = spec["template"]["spec"]
        pod.setdefault("restartPolicy", "Always")
        pod.setdefault("schedulerName", "default-scheduler")
        pod.setdefault("dnsPolicy", "ClusterFirst")
        # The deprecated twin of serviceAccountName, which the API server still fills in.
        if "serviceAccountName" in pod:
            pod.setdefault("serviceAccount", pod["serviceAccountName"])
        for volume in pod.get("volumes", []):
            for source in ("projected", "secret"):
                if source in volume:
                    volume[source].setdefault("defaultMode", 0o644)
        # The API server drops empty maps and lists.
        for k in ("nodeSelector", "tolerations"):
            if pod.get(k) in ({}, []):
                del pod[k]
        for c in pod["containers"]:
            c.setdefault("terminationMessagePath", "/dev/termination-log")
            c.setdefault("terminationMessagePolicy", "File")
            for section in ("requests", "limits"):
                values = c.get("resources", {}).get(section, {})
                for name, q in values.items():
                    values[name] = _CANONICAL.get(str(q), q)
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                if probe in c:
                    c[probe].setdefault("timeoutSeconds", 1)
                    c[probe].setdefault("successThreshold", 1)
    if kind == "Service":
        obj["spec"].setdefault("clusterIP", "10.96.0.10")
        obj["spec"].setdefault("sessionAffinity", "None")


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.writes: list[tuple[str, str, str]] = []  # (verb, kind, name)
        self.fail_next: KubeError | None = None
        self._rv = 0

    def _key(self, kind: str, namespace: str, name: str) -> tuple[str, str, str]:
        return kind, namespace, name

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.objects.get(self._key(kind, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        meta = manifest["metadata"]
        k = self._key(manifest["kind"], meta["namespace"], meta["name"])
        before = self.objects.get(k)
        obj = copy.deepcopy(dict(manifest))
        _server_defaults(obj)
        self._rv += 1
        generation = 1
        if before is not None:
            generation = before["metadata"]["generation"]
            if before.get("spec") != obj.get("spec"):
                generation += 1
            obj["status"] = before.get("status", {})
            obj["metadata"]["uid"] = before["metadata"]["uid"]
        else:
            obj["metadata"]["uid"] = f"uid-{self._rv}"
        obj["metadata"].update(generation=generation, resourceVersion=str(self._rv))
        self.objects[k] = obj
        self.writes.append(("apply", k[0], k[2]))
        return copy.deepcopy(obj)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self.objects.pop(self._key(kind, namespace, name), None)
        self.writes.append(("delete", kind, name))

    # --- what the cluster's controllers and people do ---------------------------------------

    def edit(self, kind: str, namespace: str, name: str, change: Any) -> None:
        """Someone edits a live object (kubectl edit): `change(obj)` mutates it."""
        change(self.objects[self._key(kind, namespace, name)])

    def remove(self, kind: str, namespace: str, name: str) -> None:
        """Someone deletes a child (kubectl delete)."""
        del self.objects[self._key(kind, namespace, name)]

    def roll_out(self, namespace: str, *, nodes: int = 3, ready: bool = True) -> None:
        """The DaemonSet and Deployment controllers finish (or start) every rollout."""
        for (kind, ns, _), obj in self.objects.items():
            if ns != namespace:
                continue
            gen = obj["metadata"]["generation"]
            if kind == "DaemonSet":
                obj["status"] = {"desiredNumberScheduled": nodes, "numberReady": nodes if ready else 0,
                                 "updatedNumberScheduled": nodes if ready else 0, "observedGeneration": gen}
            elif kind == "Deployment":
                n = obj["spec"]["replicas"]
                obj["status"] = {"replicas": n, "readyReplicas": n if ready else 0,
                                 "updatedReplicas": n if ready else 0, "observedGeneration": gen}
