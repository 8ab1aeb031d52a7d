"""sysmon tokens: a JWT (HS256) signed with the fleet secret, naming a scope and, for a
collector, the one host it may speak for.

The aggregator and the gateway verify them without asking anything (`sysmon token issue` makes
them). Rotation: sign with the new secret, keep the old one as the previous secret until every
holder has a new token; the key id in the header says which secret signed.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta

import jwt

from sysmon.core.identity.principal import InvalidCredential, Principal, Scope
from sysmon.core.metrics import HOST_ID_RE

ISSUER = "sysmon"
AUDIENCE = "sysmon"
MIN_SECRET_BYTES = 32
LEEWAY_S = 30


def key_id(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:12]


def check_secret(secret: str) -> None:
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise ValueError(f"the token secret must be at least {MIN_SECRET_BYTES} bytes (HS256); "
                         "e.g. `openssl rand -base64 48`")


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("ey")


def issue(secret: str, scope: Scope, *, host: str | None = None, name: str | None = None,
          ttl: timedelta | None = None, now: float | None = None) -> str:
    """A token for `scope`: a collector's names its host, a reader's or admin's a name of its own."""
    check_secret(secret)
    if scope is Scope.COLLECTOR:
        if not host or not HOST_ID_RE.match(host):
            raise ValueError("a collector token needs --host, a host id of [A-Za-z0-9._-]")
        subject = host
    else:
        if host:
            raise ValueError(f"a {scope} token is not bound to a host; give it a --name instead")
        subject = name or scope.value
    iat = int(now if now is not None else time.time())
    claims: dict[str, object] = {"iss": ISSUER, "aud": AUDIENCE, "sub": subject, "scope": scope.value,
                                 "iat": iat, "jti": uuid.uuid4().hex}
    if host:
        claims["host"] = host
    if ttl is not None:
        claims["exp"] = iat + int(ttl.total_seconds())
    return jwt.encode(claims, secret, algorithm="HS256", headers={"kid": key_id(secret)})


def verify(token: str, secrets: Sequence[str]) -> Principal:
    """The principal a valid token stands for; InvalidCredential (with the reason) otherwise."""
    if not secrets:
        raise InvalidCredential("invalid bearer token")
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.DecodeError as e:
        raise InvalidCredential("invalid bearer token") from e
    # The key id picks the secret; a token without one (or an unknown one) is tried against each.
    chosen = [s for s in secrets if key_id(s) == kid] or list(secrets)
    error: Exception | None = None
    for secret in chosen:
        try:
            claims = jwt.decode(token, secret, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER,
                                leeway=LEEWAY_S, options={"require": ["sub", "scope", "iat"]})
            break
        except jwt.ExpiredSignatureError as e:
            raise InvalidCredential("the token has expired; issue a new one (sysmon token issue)") from e
        except jwt.InvalidTokenError as e:
            error = e
    else:
        raise InvalidCredential(f"invalid bearer token ({_reason(error)})") from error
    try:
        scope = Scope(claims["scope"])
    except ValueError as e:
        raise InvalidCredential(f"the token names an unknown scope {claims['scope']!r}") from e
    host = claims.get("host")
    if scope is Scope.COLLECTOR and not (isinstance(host, str) and HOST_ID_RE.match(host)):
        raise InvalidCredential("a collector token must name its host")
    return Principal(str(claims["sub"]), frozenset({scope}), frozenset({host}) if scope is Scope.COLLECTOR else None,
                     "token")


def _reason(e: Exception | None) -> str:
    if isinstance(e, jwt.InvalidSignatureError):
        return "signature does not match any configured secret"
    if isinstance(e, jwt.InvalidAudienceError | jwt.InvalidIssuerError):
        return "not a sysmon token"
    if isinstance(e, jwt.MissingRequiredClaimError):
        return f"missing claim {e.claim}"
    if isinstance(e, jwt.ImmatureSignatureError):
        return "issued in the future"
    return "malformed"
