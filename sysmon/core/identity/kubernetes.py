"""Kubernetes ServiceAccount tokens, verified by the API server (TokenReview) and bound to a node.

Collectors present their projected, audience-bound ServiceAccount token (the kubelet rotates it
in the pod's volume). The aggregator asks the API server whether it is valid for our audience;
the review names the ServiceAccount and, from the token's bound object, the pod and its node
(`authentication.kubernetes.io/node-name`, Kubernetes 1.30+; before that the pod is read to find
its node). A collector's ServiceAccount token may speak only for the node its pod runs on, which
is the host id the DaemonSet gives it (NODE_NAME).

RBAC the aggregator needs: `create` on `tokenreviews` (authentication.k8s.io, cluster-scoped), and
on clusters older than 1.30 `get` on `pods` in the collectors' namespace.

Reviews are cached per token (until the token expires, at most CACHE_S), so a collector's
reconnects do not each cost an API call; refusals are cached briefly so a flood of bad tokens
does not become a flood of reviews.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sysmon.core.identity.principal import InvalidCredential, Principal, Scope

log = logging.getLogger(__name__)

NODE_NAME = "authentication.kubernetes.io/node-name"
POD_NAME = "authentication.kubernetes.io/pod-name"
SA_PREFIX = "system:serviceaccount:"
CACHE_S = 300.0
NEGATIVE_CACHE_S = 10.0
CACHE_SIZE = 10_000


@dataclass(frozen=True)
class Review:
    """What the API server said of a token."""

    authenticated: bool
    username: str = ""
    audiences: tuple[str, ...] = ()
    extra: dict[str, list[str]] | None = None
    error: str = ""


def _service_accounts(entries: Iterable[str]) -> frozenset[tuple[str, str]]:
    out = set()
    for e in entries:
        ns, sep, name = e.partition("/")
        if not sep or not ns or not name:
            raise ValueError(f"service account {e!r} must be written namespace/name")
        out.add((ns, name))
    return frozenset(out)


def _token_expiry(token: str) -> float | None:
    """The `exp` of a JWT, read without verifying it (the review verifies); only bounds the cache."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = claims.get("exp")
        return float(exp) if isinstance(exp, int | float) else None
    except (IndexError, ValueError, UnicodeDecodeError):
        return None


class TokenReviewer:
    """Turns ServiceAccount tokens into principals: collectors bound to their node, readers, admins."""

    def __init__(self, api_client: Any, audience: str, *, collectors: Iterable[str] = (),
                 readers: Iterable[str] = (), admins: Iterable[str] = ()):
        from kubernetes import client

        self._auth = client.AuthenticationV1Api(api_client)
        self._core = client.CoreV1Api(api_client)
        self._client = client
        self.audience = audience
        self.collectors = _service_accounts(collectors)
        self.readers = _service_accounts(readers)
        self.admins = _service_accounts(admins)
        self._cache: OrderedDict[str, tuple[float, Principal | InvalidCredential]] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[Principal]] = {}

    @classmethod
    def in_cluster(cls, audience: str, **accounts: Iterable[str]) -> TokenReviewer:
        """With the pod's own credentials (in a cluster) or else the local kubeconfig."""
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            try:
                config.load_kube_config()
            except (config.ConfigException, OSError) as e:
                raise ValueError(f"SYSMON_KUBE_AUDIENCE is set, but there is no Kubernetes API to review tokens "
                                 f"with (not in a cluster, no kubeconfig): {e}") from e
        return cls(client.ApiClient(), audience, **accounts)

    async def principal(self, token: str) -> Principal:
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            if isinstance(hit[1], InvalidCredential):
                raise hit[1]
            return hit[1]
        # Concurrent streams of one collector share one review.
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[Principal] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            p = await self._principal(token)
        except InvalidCredential as e:
            self._remember(key, now + NEGATIVE_CACHE_S, e)
            fut.set_exception(e)
            fut.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()
            raise
        else:
            exp = _token_expiry(token)
            until = now + CACHE_S if exp is None else now + min(CACHE_S, max(0.0, exp - time.time()))
            self._remember(key, until, p)
            fut.set_result(p)
            return p
        finally:
            del self._inflight[key]

    def _remember(self, key: str, until: float, value: Principal | InvalidCredential) -> None:
        self._cache[key] = (until, value)
        self._cache.move_to_end(key)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)

    async def review(self, token: str) -> Review:
        c = self._client
        body = c.V1TokenReview(api_version="authentication.k8s.io/v1", kind="TokenReview",
                               spec=c.V1TokenReviewSpec(token=token, audiences=[self.audience]))
        try:
            resp = await asyncio.to_thread(self._auth.create_token_review, body)
        except c.ApiException as e:
            log.warning("TokenReview failed: %s %s (may the aggregator's ServiceAccount create tokenreviews? "
                        "see the README's Kubernetes section)", e.status, e.reason)
            raise InvalidCredential("the ServiceAccount token could not be reviewed by the Kubernetes API") from e
        st = resp.status
        user = st.user
        return Review(bool(st.authenticated), user.username if user else "", tuple(st.audiences or ()),
                      dict(user.extra or {}) if user else {}, st.error or "")

    async def _principal(self, token: str) -> Principal:
        r = await self.review(token)
        if not r.authenticated:
            raise InvalidCredential(f"the Kubernetes API refused the token: {r.error or 'not authenticated'}")
        if self.audience not in r.audiences:
            raise InvalidCredential(f"the token is not for audience {self.audience!r}")
        if not r.username.startswith(SA_PREFIX):
            raise InvalidCredential("only ServiceAccount tokens are accepted")
        ns, _, name = r.username[len(SA_PREFIX):].partition(":")
        sa = (ns, name)
        subject = f"{ns}/{name}"
        if sa in self.admins:
            return Principal(subject, frozenset({Scope.ADMIN}), None, "kubernetes")
        if sa in self.readers:
            return Principal(subject, frozenset({Scope.READER}), None, "kubernetes")
        if sa in self.collectors:
            node = await self._node(r, ns)
            return Principal(f"{subject}@{node}", frozenset({Scope.COLLECTOR}), frozenset({node}), "kubernetes")
        raise InvalidCredential(f"ServiceAccount {subject} is not a sysmon collector, reader or admin")

    async def _node(self, r: Review, namespace: str) -> str:
        extra = r.extra or {}
        node = (extra.get(NODE_NAME) or [""])[0]
        if node:
            return node
        pod = (extra.get(POD_NAME) or [""])[0]
        if not pod:
            raise InvalidCredential("the token is not bound to a pod (use a projected ServiceAccount token)")
        try:
            obj = await asyncio.to_thread(self._core.read_namespaced_pod, pod, namespace)
        except self._client.ApiException as e:
            raise InvalidCredential(f"cannot find the node of pod {namespace}/{pod}: {e.status} {e.reason}") from e
        node = obj.spec.node_name or ""
        if not node:
            raise InvalidCredential(f"pod {namespace}/{pod} is not on a node")
        return node
