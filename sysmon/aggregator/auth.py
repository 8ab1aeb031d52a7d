"""Bearer-token authentication for every gRPC method except health, and TLS credentials."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

# Kubernetes gRPC probes carry no token.
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


def _deny(message: str) -> Callable[..., Awaitable[None]]:
    async def deny(_request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return deny


class TokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_PREFIXES):
            return handler
        presented = next((v for k, v in details.invocation_metadata or () if k == "authorization"), None)
        if presented is None:
            message = "missing bearer token: send metadata 'authorization: Bearer <token>'"
        elif hmac.compare_digest(presented.encode() if isinstance(presented, str) else presented, self._expected):
            return handler
        else:
            message = "invalid bearer token"
        deny = _deny(message)
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(deny)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(deny)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(deny)
        return grpc.unary_unary_rpc_method_handler(deny)


def server_credentials(cert: Path, key: Path, client_ca: Path | None) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())],
        root_certificates=client_ca.read_bytes() if client_ca else None,
        require_client_auth=client_ca is not None,
    )
