"""Who is calling: credentials, the principal they stand for, and its scopes.

Shared by the aggregator (gRPC) and the gateway (HTTP), so that a credential means the same on
both. Verification never asks a database: a fleet token is compared in constant time, a sysmon
token carries its own signature (HMAC under the fleet secret), a Kubernetes ServiceAccount token
is reviewed once by the API server and then cached, and a client certificate was verified by TLS.
"""

from sysmon.core.identity.authenticator import Authenticator, bearer_from_header
from sysmon.core.identity.principal import ANONYMOUS, InvalidCredential, Principal, Scope

__all__ = ["ANONYMOUS", "Authenticator", "InvalidCredential", "Principal", "Scope", "bearer_from_header"]
