"""The Kafka bus's configuration: URLs, per-topic retention, TLS and SASL, checked before any
connection is tried, with errors that say what is wrong."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from pydantic import ValidationError

from sysmon.core import bus as busmod
from sysmon.core.bus.kafka import KafkaBus, KafkaOptions, parse_kafka_url
from sysmon.core.settings import AlertsSettings, GatewaySettings


@pytest.mark.parametrize(("url", "servers"), [
    ("kafka://broker:9092", ["broker:9092"]),
    ("kafka://a:1,b,c:19092", ["a:1", "b:9092", "c:19092"]),
    ("kafka://[::1]:9093", ["[::1]:9093"]),
])
def test_kafka_urls_name_the_bootstrap_servers(url: str, servers: list[str]) -> None:
    assert parse_kafka_url(url) == servers


@pytest.mark.parametrize(("url", "error"), [
    ("redis://localhost", "is not a kafka://"),
    ("kafka://", "names no broker"),
    ("kafka://a:port", "is not host:port"),
    ("kafka://a:70000", "is not host:port"),
])
def test_bad_kafka_urls_are_refused(url: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_kafka_url(url)


def test_redis_is_the_default_bus_and_kafka_is_chosen_by_url() -> None:
    assert busmod.from_settings(GatewaySettings(), None) is None  # no Redis, no bus
    b = busmod.from_settings(GatewaySettings(bus_url="kafka://k1:9092,k2:9092"), None)
    assert isinstance(b, KafkaBus)
    assert b.partitioned
    assert b.options.bootstrap_servers == ["k1:9092", "k2:9092"]
    assert b.name(busmod.SAMPLES) == "sysmon.samples"


def test_retention_is_configured_per_topic() -> None:
    s = AlertsSettings(bus_url="kafka://k:9092", bus_retention="30m", bus_topic_retention="alerts=7d,samples=1h",
                       bus_retention_bytes=1 << 30)
    o = busmod.kafka_options(s)
    assert o.topic_config(busmod.SAMPLES) == {"retention.ms": str(3600_000), "retention.bytes": str(1 << 30)}
    assert o.topic_config(busmod.ALERTS)["retention.ms"] == str(7 * 86400_000)
    assert o.topic_config(busmod.HOSTS)["retention.ms"] == str(30 * 60_000)
    with pytest.raises(ValidationError, match="'weather' is not a bus topic"):
        AlertsSettings(bus_topic_retention="weather=1h")


def test_sasl_over_tls_reaches_the_client(tmp_path: Path) -> None:
    s = AlertsSettings(bus_url="kafka://k:9093", bus_sasl_mechanism="SCRAM-SHA-512", bus_sasl_username="sysmon",
                       bus_sasl_password="s3cret", bus_tls=True)
    o = busmod.kafka_options(s)
    assert o.security_protocol == "SASL_SSL"
    kw = o.client_kwargs()
    assert (kw["sasl_mechanism"], kw["sasl_plain_username"], kw["sasl_plain_password"]) == (
        "SCRAM-SHA-512", "sysmon", "s3cret")
    assert isinstance(kw["ssl_context"], ssl.SSLContext)
    assert kw["ssl_context"].check_hostname
    assert "s3cret" not in repr(o)  # options may be logged; the password is not in them
    assert busmod.kafka_options(AlertsSettings(bus_url="kafka://k:9092", bus_sasl_mechanism="PLAIN",
                                               bus_sasl_username="u", bus_sasl_password="p")
                                ).security_protocol == "SASL_PLAINTEXT"


@pytest.mark.parametrize(("fields", "error"), [
    ({"bus_sasl_mechanism": "PLAIN"}, "needs bus_sasl_username and bus_sasl_password"),
    ({"bus_tls_cert": "/c.pem"}, "given together"),
    ({"bus_partitions": 0}, "greater than or equal to 1"),
    ({"bus_session_timeout": "100ms"}, "between 500ms and 30m"),
    ({"bus_topic_prefix": "bad prefix"}, "String should match pattern"),
])
def test_inconsistent_bus_settings_are_refused(fields: dict[str, object], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        AlertsSettings(bus_url="kafka://k:9092", **fields)


def test_options_check_themselves() -> None:
    with pytest.raises(ValueError, match="needs security protocol SASL_SSL or SASL_PLAINTEXT"):
        KafkaOptions(["k:9092"], sasl_mechanism="PLAIN", sasl_username="u", sasl_password="p")
    with pytest.raises(ValueError, match="between 1 and 10000"):
        KafkaOptions(["k:9092"], partitions=0)
