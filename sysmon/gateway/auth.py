"""Where a WebSocket's bearer token is found (verification is sysmon.core.identity's).

Browsers cannot set headers on a WebSocket, so the token may also come as a subprotocol,
`base64url.bearer.sysmon.dev.<token, base64url without padding>` next to `sysmon.v1` (the
scheme Kubernetes uses for the same reason). Tokens never go in query strings: those end up
in access logs.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping

PROTOCOL = "sysmon.v1"
TOKEN_PROTOCOL_PREFIX = "base64url.bearer.sysmon.dev."


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


def websocket_authorization(headers: Mapping[str, str], subprotocols: Iterable[str]) -> str | None:
    """An Authorization header's value: the header itself, or one made from the token subprotocol."""
    if headers.get("authorization"):
        return headers["authorization"]
    token = bearer_from_subprotocols(subprotocols)
    return f"Bearer {token}" if token else None
