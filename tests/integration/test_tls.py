"""TLS between collectors and the aggregator, and mutual TLS, with certificates made for the test."""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sysmon.agent.collector import Collector
from sysmon.pb.v1 import control_pb2, control_pb2_grpc
from tests.conftest import AggregatorFactory
from tests.helpers import running_collector, wait_for


@dataclass
class Issued:
    cert: Path
    key: Path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class CA:
    def __init__(self, directory: Path, name: str):
        self.dir = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.now(UTC)
        self.cert = (
            x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.path = directory / f"{name}.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, *, server: bool, hosts: tuple[str, ...] = ()) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        )
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        elif hosts:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]),
                                            critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        issued = Issued(self.dir / f"{name}.crt", self.dir / f"{name}.key")
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        issued.key.write_bytes(_key_pem(key))
        return issued


@pytest.fixture
def ca(tmp_path: Path) -> CA:
    return CA(tmp_path, "sysmon-test-ca")


@pytest.fixture
def server_cert(ca: CA) -> Issued:
    return ca.issue("aggregator", server=True)


async def never_connects(c: Collector) -> None:
    await wait_for(lambda: c.stats.failures >= 2, message="connection attempts failing")
    assert c.stats.connects == 0
    assert c.buffer.acked == 0
    assert c.stats.batches > 0  # it keeps sampling into its buffer meanwhile
    assert not c.connected.is_set()


async def test_collector_trusting_the_ca_is_acknowledged(
    start_aggregator: AggregatorFactory, ca: CA, server_cert: Issued
) -> None:
    agg = await start_aggregator(tls_cert=server_cert.cert, tls_key=server_cert.key)
    async with running_collector(agg.address, host_id="tls-host", tls_ca=ca.path) as c:
        await wait_for(lambda: c.buffer.acked >= 3, message="batches acknowledged over TLS")
        assert c.stats.connects >= 1
    # Also by name: the certificate is for localhost as well as 127.0.0.1.
    async with running_collector(f"localhost:{agg.port}", host_id="tls-host-2", tls_ca=ca.path) as c:
        await wait_for(lambda: c.buffer.acked >= 1, message="batches acknowledged via localhost")


async def test_plaintext_or_untrusted_collector_never_connects(
    start_aggregator: AggregatorFactory, ca: CA, server_cert: Issued, tmp_path: Path
) -> None:
    agg = await start_aggregator(tls_cert=server_cert.cert, tls_key=server_cert.key)
    other_ca = CA(tmp_path, "someone-else")
    async with running_collector(agg.address, host_id="plain-host") as plain, \
            running_collector(agg.address, host_id="wrong-ca-host", tls_ca=other_ca.path) as untrusting:
        await asyncio.gather(never_connects(plain), never_connects(untrusting))


async def test_mutual_tls_requires_a_client_certificate(
    start_aggregator: AggregatorFactory, ca: CA, server_cert: Issued
) -> None:
    agg = await start_aggregator(tls_cert=server_cert.cert, tls_key=server_cert.key, tls_client_ca=ca.path)

    # A collector that checks the server but presents no certificate of its own is refused.
    async with running_collector(agg.address, host_id="no-cert-host", tls_ca=ca.path) as c:
        await never_connects(c)

    # A client with a certificate from the CA gets in.
    client = ca.issue("collector-1", server=False)
    creds = grpc.ssl_channel_credentials(root_certificates=ca.path.read_bytes(),
                                         private_key=client.key.read_bytes(),
                                         certificate_chain=client.cert.read_bytes())
    async with grpc.aio.secure_channel(agg.address, creds) as ch:
        health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        control = control_pb2_grpc.ControlServiceStub(ch).Connect()
        await control.write(control_pb2.AgentMessage(hello=control_pb2.Hello(host_id="mtls-host", session_id="s1")))
        async with asyncio.timeout(10):
            welcome = await control.read()
        assert welcome.WhichOneof("body") == "welcome"
        control.cancel()

    # A client certificate signed by another CA is refused.
    stranger = CA(ca.dir, "stranger-ca").issue("intruder", server=False)
    creds = grpc.ssl_channel_credentials(root_certificates=ca.path.read_bytes(),
                                         private_key=stranger.key.read_bytes(),
                                         certificate_chain=stranger.cert.read_bytes())
    async with grpc.aio.secure_channel(agg.address, creds) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_collector_with_a_client_certificate_connects_under_mutual_tls(
    start_aggregator: AggregatorFactory, ca: CA, server_cert: Issued
) -> None:
    agg = await start_aggregator(tls_cert=server_cert.cert, tls_key=server_cert.key, tls_client_ca=ca.path)
    client = ca.issue("collector-2", server=False)
    async with running_collector(agg.address, host_id="mtls-collector", tls_ca=ca.path,
                                 tls_client_cert=client.cert, tls_client_key=client.key) as c:
        # Either it connects, or it fails (and keeps failing): whichever comes first.
        await wait_for(lambda: c.buffer.acked >= 1 or c.stats.failures >= 2, message="connected or refused")
        assert c.buffer.acked >= 1, f"refused ({c.stats.failures} failed connection attempts)"


async def test_a_client_certificate_speaks_for_the_hosts_it_names_and_no_other(
    start_aggregator: AggregatorFactory, ca: CA, server_cert: Issued
) -> None:
    """Mutual TLS as the collector's identity: the host ids in its DNS names, nothing else."""
    agg = await start_aggregator(tls_cert=server_cert.cert, tls_key=server_cert.key, tls_client_ca=ca.path,
                                 client_cert_hosts=True)
    client = ca.issue("web-7", server=False, hosts=("web-7",))
    async with running_collector(agg.address, host_id="web-7", tls_ca=ca.path, tls_client_cert=client.cert,
                                 tls_client_key=client.key) as c:
        await wait_for(lambda: c.buffer.acked >= 1, message="web-7 acknowledged with its certificate alone")
    creds = grpc.ssl_channel_credentials(ca.path.read_bytes(), private_key=client.key.read_bytes(),
                                         certificate_chain=client.cert.read_bytes())
    async with grpc.aio.secure_channel(agg.address, creds) as channel:
        control = control_pb2_grpc.ControlServiceStub(channel).Connect()
        await control.write(control_pb2.AgentMessage(hello=control_pb2.Hello(host_id="web-8", session_id="s")))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await control.read()
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "may not speak for host 'web-8'" in err.value.details()
