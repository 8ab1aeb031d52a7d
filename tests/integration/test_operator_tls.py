"""A fleet with TLS, end to end over real gRPC: the aggregator and its clients run on exactly the
settings their pods would load (the operator's ConfigMap + the files the TLS Secret volume mounts),
with a certificate made the way cert-manager issues one; and the kubelet's plaintext gRPC probe
gets the health service, and nothing else, from the health-only listener."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sysmon.core.client import call_metadata, open_channel
from sysmon.core.settings import AgentSettings, AlertsSettings
from sysmon.operator import manifests as m
from sysmon.operator.fleet_spec import FleetSpec
from sysmon.pb.v1 import config_pb2, config_pb2_grpc
from tests.conftest import AggregatorFactory
from tests.helpers import running_collector, wait_for
from tests.integration.test_tls import CA

TOKEN = "fleet-token"
SERVICE_NAME = "prod-aggregator.monitoring.svc"
REF = {"secretKeyRef": {"name": "s", "key": "k"}}


def issue_tls_secret(ca: CA, directory: Path, dns_names: list[str]) -> Path:
    """A kubernetes.io/tls Secret as cert-manager writes it (tls.crt, tls.key, ca.crt), as files in
    a directory, the way the Secret volume shows it. Usable as server and as client certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
        .issuer_name(ca.name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    directory.mkdir(parents=True)
    (directory / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "tls.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    (directory / "ca.crt").write_bytes(ca.path.read_bytes())
    return directory


def pod_env(monkeypatch: pytest.MonkeyPatch, fleet: m.Fleet, component: str, secret_dir: Path) -> None:
    """The component's environment as its pod has it, the Secret volume at secret_dir instead of TLS_DIR."""
    for k in list(os.environ):
        if k.startswith("SYSMON_") or k == "NODE_NAME":
            monkeypatch.delenv(k)
    for k, v in m.config_data(fleet, component).items():
        monkeypatch.setenv(k, v.replace(m.TLS_DIR, str(secret_dir)))
    monkeypatch.setenv("SYSMON_TOKEN", TOKEN)


def tls_fleet(**tls: object) -> m.Fleet:
    # Identity mode fleetToken: every pod has SYSMON_TOKEN (pod_env), and TLS is what is tested here;
    # ServiceAccount tokens need an API server to review them.
    spec = FleetSpec.model_validate({"postgres": REF, "redis": REF, "token": REF,
                                     "tls": {"secretName": "prod-aggregator-tls", **tls},
                                     "identity": {"mode": "fleetToken"}})
    return m.Fleet("prod", "monitoring", "uid", spec)


async def health(channel: grpc.aio.Channel, service: str = "") -> int:
    response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                               timeout=10)
    return response.status


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
async def test_the_fleets_aggregator_and_clients_talk_tls_on_the_settings_their_pods_load(
    start_aggregator: AggregatorFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mutual: bool
) -> None:
    ca = CA(tmp_path, "fleet-ca")
    secret = issue_tls_secret(ca, tmp_path / "secret", [SERVICE_NAME])
    fleet = tls_fleet(mutual=mutual)

    pod_env(monkeypatch, fleet, "aggregator", secret)
    # Loopback and free ports instead of 0.0.0.0:50051/50052; everything else from the environment.
    agg = await start_aggregator(listen="127.0.0.1:0", health_listen="127.0.0.1:0", http_listen="127.0.0.1:0")
    assert agg.settings.tls_cert == secret / "tls.crt"
    assert (agg.settings.tls_client_ca is not None) is mutual

    # There is no cluster DNS here: dial the loopback port, check the certificate for the Service's name.
    dial = {"aggregator": f"127.0.0.1:{agg.port}", "tls_server_name": SERVICE_NAME}

    pod_env(monkeypatch, fleet, "collector", secret)
    async with running_collector(host_id="tls-node", host_root=None, **dial) as c:
        assert c.settings.uses_tls
        await wait_for(lambda: c.buffer.acked >= 2, message="batches acknowledged over the fleet's TLS")

    pod_env(monkeypatch, fleet, "alerts", secret)
    alerts = AlertsSettings(**dial)
    async with open_channel(alerts) as channel:
        assert await health(channel) == health_pb2.HealthCheckResponse.SERVING
        # The token travels inside TLS and is still required there.
        stub = config_pb2_grpc.ConfigServiceStub(channel)
        stream = stub.Watch(config_pb2.WatchRequest(), metadata=call_metadata(alerts), timeout=30)
        assert isinstance(await stream.read(), config_pb2.ConfigSnapshot)
        stream.cancel()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Apply(config_pb2.ApplyRequest(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

    # Plaintext to the TLS port gets nothing, not even health.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{agg.port}") as plain:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await health(plain)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_refuses_a_client_without_the_certificate(
    start_aggregator: AggregatorFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ca = CA(tmp_path, "fleet-ca")
    secret = issue_tls_secret(ca, tmp_path / "secret", [SERVICE_NAME])
    pod_env(monkeypatch, tls_fleet(mutual=True), "aggregator", secret)
    agg = await start_aggregator(listen="127.0.0.1:0", health_listen="127.0.0.1:0", http_listen="127.0.0.1:0")
    # What a fleet without mutual TLS gives its clients: the CA only.
    pod_env(monkeypatch, tls_fleet(mutual=False), "collector", secret)
    settings = AgentSettings(aggregator=f"127.0.0.1:{agg.port}", tls_server_name=SERVICE_NAME)
    assert settings.tls_client_cert is None
    async with open_channel(settings) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await health(channel)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    # ... while the kubelet, which has no certificate at all, still gets its answer.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{agg.health_port}") as plain:
        assert await health(plain) == health_pb2.HealthCheckResponse.SERVING


async def test_the_health_listener_is_plaintext_health_and_nothing_else(
    start_aggregator: AggregatorFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = issue_tls_secret(CA(tmp_path, "fleet-ca"), tmp_path / "secret", [SERVICE_NAME])
    pod_env(monkeypatch, tls_fleet(), "aggregator", secret)
    agg = await start_aggregator(listen="127.0.0.1:0", health_listen="127.0.0.1:0", http_listen="127.0.0.1:0")
    assert agg.health_port is not None
    assert agg.health_port != agg.port
    async with grpc.aio.insecure_channel(f"127.0.0.1:{agg.health_port}") as plain:
        # What the kubelet's gRPC probe asks (service ""), and each service by name.
        assert await health(plain) == health_pb2.HealthCheckResponse.SERVING
        assert await health(plain, "sysmon.v1.MetricsService") == health_pb2.HealthCheckResponse.SERVING
        # The other services are not served here, even with the token.
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await config_pb2_grpc.ConfigServiceStub(plain).Apply(
                config_pb2.ApplyRequest(), metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED

        # The probe's port goes with the aggregator.
        await agg.stop(grace=0.5)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await health(plain)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_without_health_listen_there_is_no_second_port(start_aggregator: AggregatorFactory) -> None:
    agg = await start_aggregator(listen="127.0.0.1:0")
    assert agg.health_port is None
    async with grpc.aio.insecure_channel(agg.address) as plain:
        assert await health(plain) == health_pb2.HealthCheckResponse.SERVING
