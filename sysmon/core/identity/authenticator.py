"""From what a caller presents (an Authorization header, a verified client certificate) to a Principal."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

import jwt

from sysmon.core.identity import tokens
from sysmon.core.identity.kubernetes import TokenReviewer
from sysmon.core.identity.principal import ANONYMOUS, InvalidCredential, Principal, Scope
from sysmon.core.settings import IdentitySettings

FLEET = Principal("fleet-token", frozenset(Scope), None, "fleet-token")


class MissingCredential(InvalidCredential):
    pass


def bearer_from_header(value: str | None) -> str | None:
    """The token of `Bearer <token>`; the scheme is case-insensitive (RFC 9110 11.1), as every
    HTTP client and server treats it, so gRPC and REST accept the same spellings."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class Authenticator:
    """Verifies credentials, in this order: the fleet-wide token, sysmon tokens (HS256, the fleet
    secret), Kubernetes ServiceAccount tokens (TokenReview), then a client certificate naming hosts.

    With none of them configured, authentication is off and every caller is ANONYMOUS (allowed
    everything): `sysmon up` on loopback.
    """

    def __init__(self, *, fleet_token: str | None = None, secrets: Sequence[str] = (),
                 reviewer: TokenReviewer | None = None, certificate_hosts: bool = False):
        for s in secrets:
            tokens.check_secret(s)
        self.fleet_token = fleet_token or None
        self.secrets = [s for s in secrets if s]
        self.reviewer = reviewer
        self.certificate_hosts = certificate_hosts

    @classmethod
    def from_settings(cls, settings: IdentitySettings, *, certificate_hosts: bool = False) -> Authenticator:
        token = settings.token.get_secret_value() if getattr(settings, "token", None) else None
        reviewer = None
        if settings.kube_audience:
            reviewer = TokenReviewer.in_cluster(settings.kube_audience, collectors=settings.kube_collectors,
                                                readers=settings.kube_readers, admins=settings.kube_admins)
        return cls(fleet_token=token, secrets=settings.secrets(), reviewer=reviewer,
                   certificate_hosts=certificate_hosts)

    @property
    def enabled(self) -> bool:
        return bool(self.fleet_token or self.secrets or self.reviewer or self.certificate_hosts)

    async def authenticate(self, authorization: str | None, cert_hosts: Sequence[str] = ()) -> Principal:
        if not self.enabled:
            return ANONYMOUS
        token = bearer_from_header(authorization)
        if token is None:
            if authorization:
                raise InvalidCredential("the authorization must be 'Bearer <token>'")
            if self.certificate_hosts and cert_hosts:
                hosts = frozenset(cert_hosts)
                return Principal(f"certificate:{','.join(sorted(hosts))}", frozenset({Scope.COLLECTOR}), hosts,
                                 "certificate")
            raise MissingCredential("missing bearer token: send 'authorization: Bearer <token>'")
        if self.fleet_token and hmac.compare_digest(token.encode(), self.fleet_token.encode()):
            return FLEET
        alg = _algorithm(token)
        if alg == "HS256" and self.secrets:
            return tokens.verify(token, self.secrets)
        if alg is not None and alg != "HS256" and self.reviewer is not None:
            return await self.reviewer.principal(token)
        raise InvalidCredential("invalid bearer token")


def _algorithm(token: str) -> str | None:
    if not tokens.looks_like_jwt(token):
        return None
    try:
        alg = jwt.get_unverified_header(token).get("alg")
    except jwt.DecodeError:
        return None
    return alg if isinstance(alg, str) else None
