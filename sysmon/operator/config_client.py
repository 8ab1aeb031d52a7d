"""ConfigService.Apply from the operator: one channel, a deadline per call, errors sorted into
"try again later" (Unreachable) and "the aggregator refuses this" (Refused).

Credentials, in order: the token file (SYSMON_TOKEN_FILE, the operator's projected ServiceAccount
token, read at every call so the kubelet's rotation is picked up), then the fleet token
(SYSMON_TOKEN). The next is tried only when the aggregator refuses one (UNAUTHENTICATED or
PERMISSION_DENIED): a fleet in identity mode fleetToken has an aggregator that does not review
ServiceAccount tokens, and there the fleet token still gets through. Each call starts again from
the first, so a fleet that turns serviceAccountToken on is pushed to as admin at once.
"""

from __future__ import annotations

import logging

import grpc

from sysmon.core.client import bearer_token, open_channel
from sysmon.core.settings import OperatorSettings
from sysmon.pb.v1 import config_pb2, config_pb2_grpc

log = logging.getLogger(__name__)

Metadata = tuple[tuple[str, str], ...]
# The aggregator's answers to a credential it does not accept (for any purpose, or for Apply).
_REFUSED_CREDENTIAL = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


class Unreachable(Exception):
    """The aggregator is down, restarting, overloaded or refusing our token: retry with backoff."""


class Refused(Exception):
    """The aggregator rejected the resource (INVALID_ARGUMENT): retrying the same spec cannot help."""


def _bearer(token: str | None) -> Metadata:
    return (("authorization", f"Bearer {token}"),) if token else ()


class ConfigClient:
    def __init__(self, settings: OperatorSettings):
        self.settings = settings
        self._channel: grpc.aio.Channel | None = None
        # Whether the last call got through only with the fleet token (so it is said once, not per push).
        self._fell_back = False

    @property
    def address(self) -> str:
        return self.settings.aggregator

    def credentials(self) -> list[tuple[str, Metadata]]:
        """(what, call metadata) to present, in order of preference; at least one entry."""
        s = self.settings
        out: list[tuple[str, Metadata]] = []
        if s.token_file is not None:
            out.append((f"the ServiceAccount token in {s.token_file}", _bearer(bearer_token(s))))
        if s.token is not None and s.token.get_secret_value():
            out.append(("the fleet token", _bearer(s.token.get_secret_value())))
        # An unreadable token file presents nothing; with a fleet token behind it, skip straight to that.
        present = [c for c in out if c[1]]
        return present or out[:1] or [("no token", ())]

    def credentials_description(self) -> str:
        s = self.settings
        names = ([f"the token in {s.token_file}"] if s.token_file else []) + (["the fleet token"] if s.token else [])
        return ", else ".join(names) or "no token"

    def _stub(self) -> config_pb2_grpc.ConfigServiceStub:
        if self._channel is None:
            # Created lazily, in the operator's event loop (a grpc.aio channel belongs to one loop).
            self._channel = open_channel(self.settings)
        return config_pb2_grpc.ConfigServiceStub(self._channel)

    async def apply(self, request: config_pb2.ApplyRequest) -> config_pb2.ApplyResponse:
        candidates = self.credentials()
        for i, (what, metadata) in enumerate(candidates):
            try:
                # Fails fast while the aggregator is away (no wait_for_ready): kopf spaces the retries, and
                # the status says at once that the push is pending.
                resp = await self._stub().Apply(request, timeout=self.settings.push_timeout.total_seconds(),
                                                metadata=metadata)
            except grpc.aio.AioRpcError as e:
                message = f"{e.code().name}: {e.details() or 'no details'}"
                if e.code() in _REFUSED_CREDENTIAL and i + 1 < len(candidates):
                    if not self._fell_back:
                        log.warning("aggregator %s refused %s (%s); trying %s", self.address, what, message,
                                    candidates[i + 1][0])
                    self._fell_back = True
                    continue
                if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    raise Refused(message) from e
                raise Unreachable(f"aggregator {self.address}: {message}") from e
            if i == 0 and self._fell_back and len(candidates) > 1:
                log.info("aggregator %s accepts %s again", self.address, what)
                self._fell_back = False
            return resp
        raise AssertionError("unreachable: the last credential's answer is returned or raised")

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
