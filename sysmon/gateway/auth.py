"""Bearer tokens on REST and WebSocket, compared in constant time.

Browsers cannot set headers on a WebSocket, so the token may also come as a subprotocol,
`base64url.bearer.sysmon.dev.<token, base64url without padding>` next to `sysmon.v1` (the
scheme Kubernetes uses for the same reason). Tokens never go in query strings: those end up
in access logs.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Iterable, Mapping

PROTOCOL = "sysmon.v1"
TOKEN_PROTOCOL_PREFIX = "base64url.bearer.sysmon.dev."


def bearer_from_header(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def bearer_from_subprotocols(protocols: Iterable[str]) -> str | None:
    for p in protocols:
        if p.startswith(TOKEN_PROTOCOL_PREFIX):
            raw = p[len(TOKEN_PROTOCOL_PREFIX):]
            try:
                token = base64.b64decode(raw + "=" * (-len(raw) % 4), altchars=b"-_", validate=True).decode()
            except (binascii.Error, UnicodeDecodeError, ValueError):
                return None
            return token or None
    return None


def token_matches(given: str | None, expected: str) -> bool:
    if given is None:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def websocket_token(headers: Mapping[str, str], subprotocols: Iterable[str]) -> str | None:
    return bearer_from_header(headers.get("authorization")) or bearer_from_subprotocols(subprotocols)
