"""Authentication and scopes on every gRPC method except health, malformed messages, and TLS credentials.

The interceptor verifies the caller's credential once per call (sysmon.core.identity), checks
the method's scope, and hands the principal to the handler through a context variable; the
handlers check what only they can see, the host a Hello or a batch speaks for.

It also decodes requests leniently: a message that is not valid protobuf ends the call with
INVALID_ARGUMENT naming the method (not UNKNOWN with a Python class name), counted, and logged
at most once a minute, so a broken or hostile client cannot flood the log with tracebacks. A
single request is checked here; the handlers of request streams check each message (checked()).
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from sysmon.aggregator import telemetry
from sysmon.core.identity import ANONYMOUS, Authenticator, InvalidCredential, Principal, Scope

log = logging.getLogger(__name__)

# Kubernetes gRPC probes carry no token.
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)

# What each method needs; a method not listed needs admin.
METHOD_SCOPES: dict[str, tuple[Scope, ...]] = {
    "/sysmon.v1.MetricsService/Push": (Scope.COLLECTOR,),
    "/sysmon.v1.ControlService/Connect": (Scope.COLLECTOR,),
    "/sysmon.v1.ConfigService/Watch": (Scope.COLLECTOR, Scope.READER),
    "/sysmon.v1.ConfigService/Apply": (Scope.ADMIN,),
    # OTLP/gRPC metrics (sysmon.aggregator.otlp): samples, as Push.
    "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export": (Scope.COLLECTOR,),
}

PRINCIPAL: contextvars.ContextVar[Principal] = contextvars.ContextVar("principal", default=ANONYMOUS)
FLEET_TOKEN_LOG_EVERY_S = 3600.0
MALFORMED_LOG_EVERY_S = 60.0


class MalformedRequest(Exception):
    """A message that is not valid protobuf: the call ends with INVALID_ARGUMENT. Raised by a
    handler that reads a request stream (see checked) and answered by the interceptor."""


class Malformed:
    """What the lenient deserializer returns for bytes that are not the message."""

    __slots__ = ("error", "guard", "method")

    def __init__(self, error: str, method: str, guard: AuthInterceptor):
        self.error = error
        self.method = method
        self.guard = guard


def checked(message: Any, context: grpc.aio.ServicerContext) -> Any:
    """The message of a request stream, or MalformedRequest when it did not decode. Request streams
    reach their handlers unwrapped (an async generator around each stream cost a hop per message),
    so every handler that reads one passes each message through here."""
    if type(message) is Malformed:
        raise MalformedRequest(message.guard.malformed(message.method, context.peer(), message.error))
    return message


def _lenient(deserialize: Callable[[bytes], Any] | None, method: str,
             guard: AuthInterceptor) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError as e:
            return Malformed(str(e), method, guard)

    return decode


def current() -> Principal:
    """The principal of the call being handled (ANONYMOUS when authentication is off)."""
    return PRINCIPAL.get()


def cert_hosts(context: grpc.aio.ServicerContext) -> list[str]:
    """DNS subject alternative names of a client certificate that TLS verified."""
    auth = context.auth_context() or {}
    return [v.decode() if isinstance(v, bytes) else v for v in auth.get("x509_subject_alternative_name", [])]


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, authenticator: Authenticator):
        self.authenticator = authenticator
        self._fleet_token_logged: float | None = None
        self._fleet_token_hosts: set[str] = set()
        self._malformed_logged = -MALFORMED_LOG_EVERY_S

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_PREFIXES):
            return handler
        presented = next((v for k, v in details.invocation_metadata or () if k == "authorization"), None)
        if isinstance(presented, bytes):
            presented = presented.decode(errors="replace")
        needs = METHOD_SCOPES.get(details.method, (Scope.ADMIN,))
        return _wrap(handler, details.method, self,
                     lambda context: self._authorize(presented, needs, details.method, context))

    def malformed(self, method: str, peer: str, error: str) -> str:
        telemetry.MALFORMED.labels(method.rsplit("/", 1)[-1]).inc()
        now = time.monotonic()
        if now - self._malformed_logged >= MALFORMED_LOG_EVERY_S:
            self._malformed_logged = now
            log.warning("malformed message on %s from %s (%s); further ones are only counted for a minute",
                        method, peer, error)
        return f"malformed request on {method.lstrip('/')}: {error}"

    async def _authorize(self, presented: str | None, needs: tuple[Scope, ...], method: str,
                         context: grpc.aio.ServicerContext) -> Principal:
        if not self.authenticator.enabled:
            return ANONYMOUS
        try:
            principal = await self.authenticator.authenticate(
                presented, cert_hosts(context) if self.authenticator.certificate_hosts else ())
        except InvalidCredential as e:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(e))
            raise  # abort raises; for the type checker
        if not any(principal.allows(s) for s in needs):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{method.rsplit('/', 1)[-1]} needs scope {' or '.join(needs)}; this credential has "
                f"{', '.join(sorted(principal.scopes))}",
            )
        return principal

    def note_fleet_token(self, principal: Principal, host_id: str) -> None:
        """Say which collectors still use the fleet-wide token (it may speak for any host), at once
        for the first and then at most hourly, summed up, so a fleet's upgrade does not flood the log."""
        if not principal.fleet_wide:
            return
        self._fleet_token_hosts.add(host_id)
        now = time.monotonic()
        if self._fleet_token_logged is not None and now - self._fleet_token_logged < FLEET_TOKEN_LOG_EVERY_S:
            return
        self._fleet_token_logged = now
        hosts = sorted(self._fleet_token_hosts)
        self._fleet_token_hosts.clear()
        named = ", ".join(hosts[:5]) + (f" and {len(hosts) - 5} more" if len(hosts) > 5 else "")
        log.warning("%d collector(s) authenticated with the fleet-wide token, which may speak for any host: %s; "
                    "give each its own credential (sysmon token issue --host HOST --scope collector, or a "
                    "ServiceAccount token on Kubernetes)", len(hosts), named)


def _wrap(handler: grpc.RpcMethodHandler, method: str, guard: AuthInterceptor,
          authorize: Callable[[grpc.aio.ServicerContext], Awaitable[Principal]]) -> grpc.RpcMethodHandler:
    """The same handler, run with the caller's principal set (or refused before it runs), its
    requests decoded leniently and a malformed one answered with INVALID_ARGUMENT."""
    kw: dict[str, Any] = {"request_deserializer": _lenient(handler.request_deserializer, method, guard),
                          "response_serializer": handler.response_serializer}

    async def prepare(request: Any, streaming: bool, context: grpc.aio.ServicerContext) -> Any:
        PRINCIPAL.set(await authorize(context))
        return request if streaming else checked(request, context)

    if handler.response_streaming:
        inner_stream = handler.stream_stream if handler.request_streaming else handler.unary_stream

        async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                request = await prepare(request, handler.request_streaming, context)
                async for item in inner_stream(request, context):
                    yield item
            except MalformedRequest as e:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))

        if handler.request_streaming:
            return grpc.stream_stream_rpc_method_handler(streaming, **kw)
        return grpc.unary_stream_rpc_method_handler(streaming, **kw)
    inner = handler.stream_unary if handler.request_streaming else handler.unary_unary

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            request = await prepare(request, handler.request_streaming, context)
            return await inner(request, context)
        except MalformedRequest as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))

    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary, **kw)
    return grpc.unary_unary_rpc_method_handler(unary, **kw)


def server_credentials(cert: Path, key: Path, client_ca: Path | None) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())],
        root_certificates=client_ca.read_bytes() if client_ca else None,
        require_client_auth=client_ca is not None,
    )
