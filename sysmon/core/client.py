"""A gRPC channel to the aggregator, for every component that calls it (collector, alerts,
operator): TLS when asked for (mutual with a client certificate), the token in call metadata."""

from __future__ import annotations

import logging

import grpc

from sysmon.core.settings import AggregatorClientSettings, is_loopback

log = logging.getLogger(__name__)

CHANNEL_OPTIONS = [
    # A hung aggregator (frozen, or a half-open connection) is noticed within 25 s (measured: 24.7 s
    # after SIGSTOP): a ping every 15 s that must be answered within 10 s, also while nothing else is
    # sent. The aggregator's enforcement policy allows it (sysmon.aggregator.server).
    ("grpc.keepalive_time_ms", 15_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    # gRPC core waits this long for any ping's ack (1 minute by default, whatever keepalive_timeout says).
    ("grpc.http2.ping_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Our own loop reconnects with backoff and jitter; keep gRPC's from adding minutes of its own.
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 5_000),
    # A connection of its own: channels to the same target in one process otherwise share one
    # (gRPC's global subchannel pool), so that behind a load-balanced address they all land on the
    # same aggregator and fail over together.
    ("grpc.use_local_subchannel_pool", 1),
]


def open_channel(settings: AggregatorClientSettings) -> grpc.aio.Channel:
    options = list(CHANNEL_OPTIONS)
    if settings.uses_tls:
        roots = settings.tls_ca.read_bytes() if settings.tls_ca else None
        key = settings.tls_client_key.read_bytes() if settings.tls_client_key else None
        chain = settings.tls_client_cert.read_bytes() if settings.tls_client_cert else None
        if settings.tls_server_name:
            options.append(("grpc.ssl_target_name_override", settings.tls_server_name))
        credentials = grpc.ssl_channel_credentials(roots, private_key=key, certificate_chain=chain)
        return grpc.aio.secure_channel(settings.aggregator, credentials, options)
    if (settings.token or settings.token_file) and not is_loopback(settings.aggregator):
        log.warning("sending the token to %s without TLS; set SYSMON_TLS_CA or SYSMON_TLS", settings.aggregator)
    return grpc.aio.insecure_channel(settings.aggregator, options)


def bearer_token(settings: AggregatorClientSettings) -> str | None:
    """The token to present: the file's current content (rotated by the kubelet), else the setting."""
    if settings.token_file is not None:
        try:
            return settings.token_file.read_text().strip() or None
        except OSError as e:
            log.error("cannot read the token file %s: %s", settings.token_file, e)
            return None
    return settings.token.get_secret_value() if settings.token is not None else None


def call_metadata(settings: AggregatorClientSettings) -> tuple[tuple[str, str], ...]:
    """Read at every connection, so that a rotated token file is picked up."""
    token = bearer_token(settings)
    return (("authorization", f"Bearer {token}"),) if token else ()
