"""A principal: what a verified credential may do (its scopes) and for which hosts."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Scope(StrEnum):
    # Push and Connect for its own host(s), Watch of its own CollectorConfig.
    COLLECTOR = "collector"
    # The gateway's REST and WebSocket; ConfigService.Watch of any kind (the alerts service).
    READER = "reader"
    # Everything, ConfigService.Apply included (the operator, `sysmon up --rules`).
    ADMIN = "admin"


class InvalidCredential(Exception):
    """A credential that was presented and is not valid; the message says why, never the credential."""


@dataclass(frozen=True)
class Principal:
    subject: str
    scopes: frozenset[Scope]
    # The hosts it may speak for; None: any host (fleet-wide credentials, readers, admins).
    hosts: frozenset[str] | None = None
    # How it was verified: none | fleet-token | token | kubernetes | certificate.
    via: str = "none"

    def allows(self, scope: Scope) -> bool:
        return scope in self.scopes or Scope.ADMIN in self.scopes

    def may_speak_for(self, host_id: str) -> bool:
        return self.hosts is None or host_id in self.hosts

    @property
    def fleet_wide(self) -> bool:
        return self.via == "fleet-token"

    def describe(self) -> str:
        hosts = "any host" if self.hosts is None else ", ".join(sorted(self.hosts))
        return f"{self.subject} ({'/'.join(sorted(self.scopes))} for {hosts}, by {self.via})"


# Authentication off: `sysmon up` on loopback, or a listener explicitly run without a token.
ANONYMOUS = Principal("anonymous", frozenset(Scope), None, "none")
