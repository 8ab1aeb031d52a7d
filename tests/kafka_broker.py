"""A Kafka-protocol broker for the tests: tansu (sysmon.core.embedded.EmbeddedTansu), or a real
Kafka named by SYSMON_TEST_KAFKA=host:port[,host:port] (the tests that restart the broker skip)."""

from __future__ import annotations

import os

from sysmon.core.embedded import EmbeddedTansu as TansuBroker

__all__ = ["TansuBroker", "real_kafka"]


def real_kafka() -> str | None:
    """kafka://... of the real Kafka named by SYSMON_TEST_KAFKA, if any."""
    v = os.environ.get("SYSMON_TEST_KAFKA", "").strip()
    if not v:
        return None
    return v if v.startswith("kafka://") else f"kafka://{v}"
