"""Settings of `sysmon export sqs` (every flag also a SYSMON_* environment variable)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from pydantic import Field, field_validator

from sysmon.core.durations import Duration, within
from sysmon.core.settings import ConnectionSettings
from sysmon.pipeline import wire
from sysmon.pipeline.pack import MIN_MESSAGE_BYTES


class SqsExporterSettings(ConnectionSettings):
    """Forward the samples topic to an SQS queue, through a consumer group of its own."""

    queue_url: str = Field(..., description="the SQS queue's URL (https://sqs.REGION.amazonaws.com/ACCOUNT/NAME)")
    region: str | None = Field(None, description="AWS region; default: from the queue URL, else AWS_REGION")
    endpoint_url: str | None = Field(None, description="SQS endpoint (a local SQS API); default: AWS's")
    consumer_group: str = Field("sqs-exporter", description="bus consumer group (one per queue forwarded to)")
    consumer: str = Field(
        "sqs-exporter-0", description="consumer name in the group; keep it across restarts to resume where it stopped"
    )
    metrics_listen: str = Field("127.0.0.1:9466", description="host:port of /metrics; empty: off")
    message_bytes: int = Field(
        64 * 1024, description=f"fill messages up to this size ({MIN_MESSAGE_BYTES}-{wire.MAX_MESSAGE_BYTES})"
    )
    linger: Annotated[Duration, within(timedelta(0), timedelta(seconds=60))] = Field(
        timedelta(milliseconds=500),
        description="wait this long for more samples before sending a call that is not full",
    )
    retry_max: Duration = Field(timedelta(seconds=30), description="longest wait between attempts of a failed call")
    # Read only to refuse it: the exporter resumes from a Redis consumer group's position, so on a
    # fleet whose bus is Kafka it would read an empty Redis stream and forward nothing, silently.
    bus_url: str | None = Field(None, description="must be unset: the exporter reads the Redis bus")
    # Likewise: split into shards (for alerts replicas) the samples are not on the one stream it reads.
    bus_redis_shards: int = Field(1, description="must be 1: the exporter reads the one Redis samples stream")

    @field_validator("message_bytes")
    @classmethod
    def _message_bytes(cls, v: int) -> int:
        if not MIN_MESSAGE_BYTES <= v <= wire.MAX_MESSAGE_BYTES:
            raise ValueError(f"must be between {MIN_MESSAGE_BYTES} and {wire.MAX_MESSAGE_BYTES} (SQS's limit)")
        return v

    @field_validator("bus_url")
    @classmethod
    def _bus_url(cls, v: str | None) -> str | None:
        if v:
            raise ValueError("the SQS exporter reads the Redis bus (SYSMON_REDIS_URL) only; it cannot forward "
                             "from the Kafka bus yet: unset SYSMON_BUS_URL")
        return v

    @field_validator("bus_redis_shards")
    @classmethod
    def _one_stream(cls, v: int) -> int:
        if v != 1:
            raise ValueError("the SQS exporter reads the one Redis samples stream; it does not follow the samples "
                             "split into shards yet: unset SYSMON_BUS_REDIS_SHARDS")
        return v

    @field_validator("queue_url")
    @classmethod
    def _queue_url(cls, v: str) -> str:
        if not v.startswith(("https://", "http://")):
            raise ValueError("must be the queue's URL (https://sqs.REGION.amazonaws.com/ACCOUNT/NAME)")
        return v

    def region_name(self) -> str | None:
        """The region in an AWS queue URL (sqs.us-east-1.amazonaws.com), else the setting."""
        if self.region:
            return self.region
        host = self.queue_url.split("/")[2]
        parts = host.split(".")
        if len(parts) >= 4 and parts[0] == "sqs" and parts[2] == "amazonaws":
            return parts[1]
        return None
