"""The metric model: what a series is, how it is identified, and the limits every edge enforces."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta

# OpenTelemetry metric names: dotted lowercase words, underscores allowed (system.cpu.load_average.1m).
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")
ATTR_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")
# Host ids become Redis keys, label values and URL path segments: keep them DNS-like.
HOST_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")

# Sequence numbers and timestamps are stored as PostgreSQL int8: the wire's uint64 must fit.
MAX_SEQ = 2**63 - 1

GAUGE = 1
RATE = 2
# A cumulative counter stored as sent (Prometheus remote write, OTLP cumulative sums).
COUNTER = 3
KINDS = {GAUGE: "gauge", RATE: "rate", COUNTER: "counter"}

# What a collector can be told to sample; see sysmon.agent.sampler.METRICS for each group's series.
METRIC_GROUPS = ("cpu", "memory", "paging", "filesystem", "disk", "network", "process", "system")


@dataclass(frozen=True)
class Limits:
    """What the aggregator accepts; each violation is answered with a message naming the limit."""

    max_message_bytes: int = 4 * 1024 * 1024
    max_name_length: int = 255
    max_attributes: int = 16
    max_attribute_key_length: int = 64
    max_attribute_value_length: int = 256
    max_unit_length: int = 32
    max_host_id_length: int = 253
    max_session_id_length: int = 64
    # A Hello's labels and facts (stored in the hosts row, shown on the dashboard).
    max_host_labels: int = 64
    max_label_key_length: int = 63
    max_label_value_length: int = 63
    max_hostname_length: int = 253
    max_agent_version_length: int = 128
    max_os_length: int = 128
    max_series_per_stream: int = 20_000
    max_series_per_host: int = 20_000
    max_samples_per_second_per_host: int = 10_000
    max_sample_burst_per_host: int = 200_000
    max_series_per_batch: int = 20_000
    max_frames_per_batch: int = 1_000
    max_samples_per_batch: int = 200_000
    # A collector replays what it buffered while the aggregator was away, with the original
    # timestamps, so the past bound is the raw tier's retention rather than a few minutes.
    max_past: timedelta = timedelta(hours=24)
    max_future: timedelta = timedelta(minutes=5)

    def describe(self) -> dict[str, int | str]:
        return {
            "max_message_bytes": self.max_message_bytes,
            "max_name_length": self.max_name_length,
            "max_attributes": self.max_attributes,
            "max_attribute_key_length": self.max_attribute_key_length,
            "max_attribute_value_length": self.max_attribute_value_length,
            "max_series_per_stream": self.max_series_per_stream,
            "max_series_per_host": self.max_series_per_host,
            "max_samples_per_second_per_host": self.max_samples_per_second_per_host,
            "max_samples_per_batch": self.max_samples_per_batch,
            "max_past": str(self.max_past),
            "max_future": str(self.max_future),
        }


@dataclass(frozen=True, slots=True)
class Series:
    """One time series of one host. `id` is stable everywhere: see series_id()."""

    id: int
    host_id: str
    name: str
    attributes: Mapping[str, str] = field(default_factory=dict)
    unit: str = ""
    kind: int = GAUGE


def canonical_attributes(attributes: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(attributes.items()))


def series_id(host_id: str, name: str, attributes: Mapping[str, str]) -> int:
    """A signed 64-bit id from (host, name, sorted attributes).

    Derived rather than allocated so that the aggregator can write the hot tier and publish
    while PostgreSQL is down, and every replica computes the same id without coordination.
    At a million series the chance of any collision is about 3e-8.
    """
    h = hashlib.blake2b(digest_size=8)
    h.update(host_id.encode())
    h.update(b"\x00")
    h.update(name.encode())
    for k, v in canonical_attributes(attributes):
        h.update(b"\x00")
        h.update(k.encode())
        h.update(b"\x01")
        h.update(v.encode())
    return int.from_bytes(h.digest(), "big", signed=True)


class InvalidInput(ValueError):
    """Input that breaks a named limit. `field` says which part of the input."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def check_host_id(host_id: str, limits: Limits) -> None:
    if not host_id:
        raise InvalidInput("host_id", "must not be empty")
    if len(host_id) > limits.max_host_id_length:
        raise InvalidInput("host_id", f"longer than {limits.max_host_id_length} characters")
    if not HOST_ID_RE.match(host_id):
        raise InvalidInput(
            "host_id", f"{host_id!r} must start with a letter or digit and contain only [A-Za-z0-9._-]"
        )


def check_session_id(session_id: str, limits: Limits) -> None:
    if not session_id:
        raise InvalidInput("session_id", "must not be empty")
    if len(session_id) > limits.max_session_id_length or not HOST_ID_RE.match(session_id):
        raise InvalidInput(
            "session_id",
            f"must be 1-{limits.max_session_id_length} characters of [A-Za-z0-9._-], "
            "starting with a letter or digit",
        )


def check_series(name: str, attributes: Mapping[str, str], unit: str, limits: Limits) -> None:
    if not name:
        raise InvalidInput("name", "must not be empty")
    if len(name) > limits.max_name_length:
        raise InvalidInput("name", f"{name[:40]!r}... is longer than {limits.max_name_length} characters")
    if not NAME_RE.match(name):
        raise InvalidInput("name", f"{name!r} must match [A-Za-z_][A-Za-z0-9_.]*")
    if len(attributes) > limits.max_attributes:
        raise InvalidInput(
            "attributes", f"{name} has {len(attributes)} attributes, more than {limits.max_attributes}"
        )
    for k, v in attributes.items():
        if len(k) > limits.max_attribute_key_length or not ATTR_KEY_RE.match(k):
            raise InvalidInput(
                "attributes",
                f"{name}: key {k[:80]!r} must match [A-Za-z_][A-Za-z0-9_.]* "
                f"and be at most {limits.max_attribute_key_length} characters",
            )
        if len(v) > limits.max_attribute_value_length:
            raise InvalidInput(
                "attributes",
                f"{name}: value of {k!r} is longer than {limits.max_attribute_value_length} characters",
            )
        if _CONTROL_RE.search(v):
            raise InvalidInput("attributes", f"{name}: value of {k!r} contains control characters")
    if len(unit) > limits.max_unit_length or _CONTROL_RE.search(unit):
        raise InvalidInput("unit", f"{name}: unit must be at most {limits.max_unit_length} printable characters")


def first_non_finite(values: Iterable[float]) -> int | None:
    """Index of the first NaN or infinity, or None; the common all-finite case stays in C."""
    values = list(values)
    if all(map(math.isfinite, values)):
        return None
    return next(i for i, v in enumerate(values) if not math.isfinite(v))


def format_series(name: str, attributes: Mapping[str, str]) -> str:
    """Prometheus-style text for messages: system.cpu.utilization{cpu="0",state="user"}."""
    if not attributes:
        return name
    inner = ",".join(f'{k}="{v}"' for k, v in canonical_attributes(attributes))
    return f"{name}{{{inner}}}"
