"""The few Kubernetes API calls the operator makes on a fleet's children, over the official client.

Get by name, server-side apply, delete: nothing lists or watches children, so the RBAC Role
grants exactly get/create/patch/delete on the kinds in KINDS (kustomize/base/operator/rbac.yaml).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

from sysmon.operator.manifests import MANAGER


class KubeError(Exception):
    """An API call failed; `retryable` when trying again later can help."""

    def __init__(self, message: str, *, retryable: bool = True):
        super().__init__(message)
        self.retryable = retryable


class Kube(Protocol):
    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...

    def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]: ...

    def delete(self, kind: str, namespace: str, name: str) -> None: ...


# kind -> (API class, method suffix)
KINDS = {
    "ServiceAccount": ("CoreV1Api", "namespaced_service_account"),
    "ConfigMap": ("CoreV1Api", "namespaced_config_map"),
    "Service": ("CoreV1Api", "namespaced_service"),
    "Deployment": ("AppsV1Api", "namespaced_deployment"),
    "DaemonSet": ("AppsV1Api", "namespaced_daemon_set"),
    "PodDisruptionBudget": ("PolicyV1Api", "namespaced_pod_disruption_budget"),
}


class ClientKube:
    """Kube over `kubernetes.client`: in-cluster credentials, or the kubeconfig outside a cluster."""

    def __init__(self, api_client: Any | None = None):
        from kubernetes import client, config

        if api_client is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                try:
                    config.load_kube_config()
                except (config.ConfigException, OSError) as e:
                    raise KubeError(f"no Kubernetes credentials: not in a pod, and no usable kubeconfig ({e})",
                                    retryable=False) from e
            api_client = client.ApiClient()
        self._apis = {name: getattr(client, name)(api_client) for name in {"CoreV1Api", "AppsV1Api"}}

    def _call(self, verb: str, kind: str, *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        api, suffix = KINDS[kind]
        method = getattr(self._apis[api], f"{verb}_{suffix}")
        try:
            # Raw JSON: the dict the API server sent, not the client's model objects.
            resp = method(*args, _preload_content=False, **kwargs)
        except ApiException as e:
            if e.status == 404:
                return None
            # 4xx other than conflicts/throttling are our mistake or missing permissions: say so.
            retryable = e.status in (409, 429) or e.status >= 500
            raise KubeError(f"{verb} {kind} {args[:2]}: {e.status} {e.reason}: {_message(e.body)}",
                            retryable=retryable) from e
        except (OSError, HTTPError) as e:
            raise KubeError(f"{verb} {kind}: API server unreachable: {e}") from e
        data = resp.data
        return json.loads(data) if data else {}

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self._call("read", kind, name, namespace)

    def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        # Server-side apply: fields we stop setting are removed, fields others own are kept,
        # and a deleted object is created again by the same call.
        meta = manifest["metadata"]
        out = self._call("patch", manifest["kind"], meta["name"], meta["namespace"], dict(manifest),
                         field_manager=MANAGER, force=True, _content_type="application/apply-patch+yaml")
        return out or {}

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self._call("delete", kind, name, namespace)


def _message(body: Any) -> str:
    try:
        return str(json.loads(body).get("message", body))
    except (TypeError, ValueError, AttributeError):
        return str(body)
