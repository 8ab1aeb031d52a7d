"""Settings: flags and SYSMON_* variables, labels, bounds, TLS pairing, loopback detection."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from sysmon.core.metrics import METRIC_GROUPS, Limits
from sysmon.core.settings import AgentSettings, AggregatorSettings, StorageSettings, is_loopback


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read the environment: start every test from none of ours."""
    for k in list(os.environ):
        if k.startswith("SYSMON_"):
            monkeypatch.delenv(k)
    monkeypatch.delenv("NODE_NAME", raising=False)


# --- labels ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("env=prod,zone=a", {"env": "prod", "zone": "a"}),
        (" env = prod , zone=a ", {"env": "prod", "zone": "a"}),
        ("env=", {"env": ""}),
        ("url=http://x/?a=b", {"url": "http://x/?a=b"}),
        ('{"env": "prod", "zone": "a"}', {"env": "prod", "zone": "a"}),
        ("", {}),
        ("   ", {}),
        ({"env": "prod"}, {"env": "prod"}),
    ],
)
def test_labels_parsing(given: object, expected: dict[str, str]) -> None:
    assert AgentSettings(labels=given).labels == expected


@pytest.mark.parametrize(("given", "bad"), [("env=prod,zone", "'zone'"), ("=prod", "'=prod'"), ("a=b,,c=d", "''")])
def test_labels_bad_pairs_are_rejected_naming_the_part(given: str, bad: str) -> None:
    with pytest.raises(ValidationError) as info:
        AgentSettings(labels=given)
    err = info.value.errors()[0]
    assert err["loc"] == ("labels",)
    assert f"label {bad} is not key=value" in err["msg"]


def test_labels_bad_json_is_rejected() -> None:
    with pytest.raises(ValidationError) as info:
        AgentSettings(labels='{"env": ')
    assert info.value.errors()[0]["loc"] == ("labels",)


def test_labels_json_must_be_strings() -> None:
    with pytest.raises(ValidationError):
        AgentSettings(labels='{"env": ["a"]}')


def test_labels_from_env_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYSMON_LABELS", '{"env": "prod"}')
    assert AgentSettings().labels == {"env": "prod"}


def test_labels_from_env_in_shell_form(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYSMON_LABELS", "env=prod,zone=a")
    assert AgentSettings().labels == {"env": "prod", "zone": "a"}


# --- is_loopback -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:50051", True),
        ("127.1.2.3:8080", True),
        ("localhost:8080", True),
        ("[::1]:50051", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        (":50051", False),
        ("10.0.0.5:50051", False),
        ("example.com:443", False),
        ("localhost.evil.com:80", False),
    ],
)
def test_is_loopback(listen: str, expected: bool) -> None:
    assert is_loopback(listen) is expected


# --- AgentSettings -----------------------------------------------------------------------------------


def test_agent_defaults() -> None:
    s = AgentSettings()
    assert s.aggregator == "127.0.0.1:50051"
    assert s.interval == timedelta(seconds=5)
    assert s.metric_groups == list(METRIC_GROUPS)
    assert s.buffer_batches == 2880
    assert s.ack_timeout == timedelta(seconds=30)
    assert s.token is None
    assert s.host_id


@pytest.mark.parametrize("interval", ["100ms", "1s", "5s", "1h", 0.1, 3600])
def test_agent_interval_within_bounds(interval: str | float) -> None:
    AgentSettings(interval=interval)


@pytest.mark.parametrize("interval", ["99ms", "0s", "0", "61m", "1h1ms", "2h", 0.05])
def test_agent_interval_out_of_bounds(interval: str | float) -> None:
    with pytest.raises(ValidationError) as info:
        AgentSettings(interval=interval)
    err = info.value.errors()[0]
    assert err["loc"] == ("interval",)
    assert "interval must be between 100ms and 1h" in err["msg"]


def test_agent_interval_bad_text() -> None:
    with pytest.raises(ValidationError, match="invalid duration"):
        AgentSettings(interval="soon")


def test_agent_buffer_must_hold_at_least_one_batch() -> None:
    with pytest.raises(ValidationError):
        AgentSettings(buffer_batches=0)


def test_agent_reads_sysmon_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYSMON_AGGREGATOR", "agg.example:443")
    monkeypatch.setenv("SYSMON_TOKEN", "s3cret")
    monkeypatch.setenv("SYSMON_HOST_ID", "node-9")
    monkeypatch.setenv("SYSMON_INTERVAL", "10s")
    monkeypatch.setenv("SYSMON_TLS", "true")
    monkeypatch.setenv("SYSMON_METRIC_GROUPS", '["cpu", "memory"]')
    monkeypatch.setenv("SYSMON_ACK_TIMEOUT", "1m")
    s = AgentSettings()
    assert s.aggregator == "agg.example:443"
    assert s.token is not None
    assert s.token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)
    assert s.host_id == "node-9"
    assert s.interval == timedelta(seconds=10)
    assert s.tls is True
    assert s.metric_groups == ["cpu", "memory"]
    assert s.ack_timeout == timedelta(minutes=1)


def test_agent_env_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYSMON_INTERVAL", "10ms")
    with pytest.raises(ValidationError, match="interval must be between 100ms and 1h"):
        AgentSettings()


def test_explicit_values_override_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYSMON_HOST_ID", "from-env")
    assert AgentSettings(host_id="given").host_id == "given"


def test_host_id_defaults_to_node_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_NAME", "k8s-node-3")
    assert AgentSettings().host_id == "k8s-node-3"


def test_unrelated_env_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYSMON_NOT_A_SETTING", "x")
    monkeypatch.setenv("INTERVAL", "1ms")
    assert AgentSettings().interval == timedelta(seconds=5)


# --- AggregatorSettings -----------------------------------------------------------------------------


def test_aggregator_tls_cert_without_key_is_rejected() -> None:
    with pytest.raises(ValidationError, match="tls_cert and tls_key are given together"):
        AggregatorSettings(tls_cert="/etc/sysmon/tls.crt")


def test_aggregator_tls_key_without_cert_is_rejected() -> None:
    with pytest.raises(ValidationError, match="tls_cert and tls_key are given together"):
        AggregatorSettings(tls_key="/etc/sysmon/tls.key")


def test_aggregator_tls_pair_is_accepted() -> None:
    s = AggregatorSettings(tls_cert="/etc/sysmon/tls.crt", tls_key="/etc/sysmon/tls.key")
    assert s.tls_cert == Path("/etc/sysmon/tls.crt")
    assert s.tls_key == Path("/etc/sysmon/tls.key")


def test_aggregator_tls_cert_from_env_without_key_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYSMON_TLS_CERT", "/etc/sysmon/tls.crt")
    with pytest.raises(ValidationError, match="tls_cert and tls_key are given together"):
        AggregatorSettings()


def test_aggregator_reads_sysmon_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYSMON_POSTGRES_URL", "postgresql://u@db/sysmon")
    monkeypatch.setenv("SYSMON_REDIS_URL", "redis://cache:6379/0")
    monkeypatch.setenv("SYSMON_LISTEN", "0.0.0.0:50051")
    monkeypatch.setenv("SYSMON_RAW_RETENTION", "48h")
    monkeypatch.setenv("SYSMON_LOG_LEVEL", "debug")
    monkeypatch.setenv("SYSMON_STORAGE_MODE", "plain")
    s = AggregatorSettings()
    assert s.postgres_url == "postgresql://u@db/sysmon"
    assert s.redis_url == "redis://cache:6379/0"
    assert s.listen == "0.0.0.0:50051"
    assert s.raw_retention == timedelta(hours=48)
    assert s.log_level == "debug"
    assert s.storage_mode == "plain"


def test_aggregator_rejects_unknown_storage_mode() -> None:
    with pytest.raises(ValidationError):
        AggregatorSettings(storage_mode="mysql")


@pytest.mark.parametrize(("field", "value"), [("max_attributes", 0), ("max_attributes", 129), ("writers", 0),
                                              ("max_message_bytes", 1024), ("max_series_per_stream", 0)])
def test_aggregator_bounds(field: str, value: int) -> None:
    with pytest.raises(ValidationError) as info:
        AggregatorSettings(**{field: value})
    assert info.value.errors()[0]["loc"] == (field,)


def test_aggregator_limits_follow_settings() -> None:
    s = AggregatorSettings(max_attributes=8, max_series_per_stream=500, raw_retention="12h", max_future="1m",
                           max_message_bytes=1024 * 1024)
    lim = s.limits()
    assert isinstance(lim, Limits)
    assert lim.max_attributes == 8
    assert lim.max_series_per_stream == 500
    assert lim.max_past == timedelta(hours=12)  # replays are accepted as far back as raw data is kept
    assert lim.max_future == timedelta(minutes=1)
    assert lim.max_message_bytes == 1024 * 1024


def test_storage_defaults_match_the_design() -> None:
    s = StorageSettings()
    assert (s.raw_retention, s.rollup_1m_retention, s.rollup_1h_retention, s.hot_window) == (
        timedelta(hours=24), timedelta(days=7), timedelta(days=90), timedelta(minutes=5)
    )


# --- SqsExporterSettings ---------------------------------------------------------------------------


def test_the_sqs_exporter_refuses_a_kafka_bus_instead_of_forwarding_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from sysmon.pipeline.settings import SqsExporterSettings

    queue = "https://sqs.eu-west-1.amazonaws.com/123456789012/samples"
    assert SqsExporterSettings(queue_url=queue).region_name() == "eu-west-1"
    monkeypatch.setenv("SYSMON_BUS_URL", "kafka://broker:9092")
    with pytest.raises(ValidationError, match=r"reads the Redis bus .* unset SYSMON_BUS_URL"):
        SqsExporterSettings(queue_url=queue)


def test_the_sqs_exporter_refuses_samples_split_into_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    from sysmon.pipeline.settings import SqsExporterSettings

    queue = "https://sqs.eu-west-1.amazonaws.com/123456789012/samples"
    monkeypatch.setenv("SYSMON_BUS_REDIS_SHARDS", "12")
    with pytest.raises(ValidationError, match=r"one Redis samples stream.*unset SYSMON_BUS_REDIS_SHARDS"):
        SqsExporterSettings(queue_url=queue)
