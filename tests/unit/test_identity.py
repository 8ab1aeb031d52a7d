"""Credentials to principals: the fleet token, sysmon tokens (HS256), client certificates."""

from __future__ import annotations

from datetime import timedelta

import jwt
import pytest

from sysmon.core.identity import ANONYMOUS, Authenticator, InvalidCredential, Scope, bearer_from_header, tokens
from sysmon.core.identity.authenticator import FLEET, MissingCredential

SECRET = "s" * 32
OLD = "o" * 40


def test_a_collector_token_speaks_for_its_host_only() -> None:
    p = tokens.verify(tokens.issue(SECRET, Scope.COLLECTOR, host="web-1"), [SECRET])
    assert p.subject == "web-1"
    assert p.allows(Scope.COLLECTOR)
    assert not p.allows(Scope.READER)
    assert not p.allows(Scope.ADMIN)
    assert p.may_speak_for("web-1")
    assert not p.may_speak_for("web-2")


def test_reader_and_admin_tokens() -> None:
    reader = tokens.verify(tokens.issue(SECRET, Scope.READER, name="grafana"), [SECRET])
    assert (reader.subject, reader.allows(Scope.READER), reader.allows(Scope.ADMIN)) == ("grafana", True, False)
    admin = tokens.verify(tokens.issue(SECRET, Scope.ADMIN, name="operator"), [SECRET])
    assert all(admin.allows(s) for s in Scope)
    assert admin.may_speak_for("any-host")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"scope": Scope.COLLECTOR}, "needs --host"),
    ({"scope": Scope.COLLECTOR, "host": "bad host"}, "needs --host"),
    ({"scope": Scope.READER, "host": "web-1"}, "not bound to a host"),
])
def test_issue_refuses_what_would_not_make_sense(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tokens.issue(SECRET, **kwargs)


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        tokens.issue("short", Scope.READER)
    with pytest.raises(ValueError, match="at least 32 bytes"):
        Authenticator(secrets=["short"])


def test_expired_forged_and_foreign_tokens_are_refused_with_the_reason() -> None:
    expired = tokens.issue(SECRET, Scope.READER, ttl=timedelta(seconds=60), now=1_000_000)
    with pytest.raises(InvalidCredential, match="expired"):
        tokens.verify(expired, [SECRET])
    with pytest.raises(InvalidCredential, match="signature does not match"):
        tokens.verify(tokens.issue("x" * 32, Scope.ADMIN), [SECRET])
    foreign = jwt.encode({"sub": "a", "scope": "admin", "iat": 1, "aud": "else", "iss": "sysmon"}, SECRET,
                         algorithm="HS256")
    with pytest.raises(InvalidCredential, match="not a sysmon token"):
        tokens.verify(foreign, [SECRET])
    unscoped = jwt.encode({"sub": "a", "scope": "root", "iat": 1, "aud": "sysmon", "iss": "sysmon"}, SECRET,
                          algorithm="HS256")
    with pytest.raises(InvalidCredential, match="unknown scope"):
        tokens.verify(unscoped, [SECRET])


def test_tokens_of_the_previous_secret_stay_valid_through_a_rotation() -> None:
    old = tokens.issue(OLD, Scope.COLLECTOR, host="web-1")
    assert tokens.verify(old, [SECRET, OLD]).may_speak_for("web-1")
    with pytest.raises(InvalidCredential):
        tokens.verify(old, [SECRET])


@pytest.mark.parametrize("header", ["Bearer abc", "bearer abc", "BEARER  abc ", " Bearer abc"])
def test_the_bearer_scheme_is_case_insensitive(header: str) -> None:
    assert bearer_from_header(header) == "abc"


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer", "Bearer   "])
def test_what_is_not_a_bearer_token(header: str | None) -> None:
    assert bearer_from_header(header) is None


async def test_authenticator_order_and_refusals() -> None:
    auth = Authenticator(fleet_token="fleet-secret", secrets=[SECRET])
    assert await auth.authenticate("Bearer fleet-secret") is FLEET
    assert (await auth.authenticate("bearer fleet-secret")).fleet_wide
    collector = await auth.authenticate("Bearer " + tokens.issue(SECRET, Scope.COLLECTOR, host="web-1"))
    assert collector.hosts == frozenset({"web-1"})
    with pytest.raises(MissingCredential, match="missing bearer token"):
        await auth.authenticate(None)
    with pytest.raises(InvalidCredential, match="'Bearer <token>'"):
        await auth.authenticate("Basic dXNlcjpwYXNz")
    with pytest.raises(InvalidCredential, match="invalid bearer token"):
        await auth.authenticate("Bearer fleet-secreT")
    # A JWT signed with another algorithm is a Kubernetes token; without a reviewer it is refused.
    rs = jwt.encode({"sub": "x"}, "k" * 64, algorithm="HS512")
    with pytest.raises(InvalidCredential, match="invalid bearer token"):
        await auth.authenticate(f"Bearer {rs}")


async def test_without_credentials_configured_everyone_is_anonymous() -> None:
    auth = Authenticator()
    assert not auth.enabled
    assert await auth.authenticate(None) is ANONYMOUS
    assert ANONYMOUS.allows(Scope.ADMIN)


async def test_a_client_certificate_speaks_for_the_hosts_it_names() -> None:
    auth = Authenticator(certificate_hosts=True)
    p = await auth.authenticate(None, ["web-1", "web-1.example.com"])
    assert p.via == "certificate"
    assert p.may_speak_for("web-1")
    assert not p.may_speak_for("web-2")
    assert not p.allows(Scope.READER)
    with pytest.raises(MissingCredential):
        await auth.authenticate(None, [])


def test_kubernetes_review_without_an_api_is_a_clear_configuration_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    from sysmon.core.identity.kubernetes import TokenReviewer

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path}/none")
    with pytest.raises(ValueError, match="SYSMON_KUBE_AUDIENCE is set, but there is no Kubernetes API"):
        TokenReviewer.in_cluster("sysmon.dev")
