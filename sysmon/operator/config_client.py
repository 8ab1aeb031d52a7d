"""ConfigService.Apply from the operator: one channel, a deadline per call, errors sorted into
"try again later" (Unreachable) and "the aggregator refuses this" (Refused)."""

from __future__ import annotations

import grpc

from sysmon.core.client import call_metadata, open_channel
from sysmon.core.settings import OperatorSettings
from sysmon.pb.v1 import config_pb2, config_pb2_grpc


class Unreachable(Exception):
    """The aggregator is down, restarting, overloaded or refusing our token: retry with backoff."""


class Refused(Exception):
    """The aggregator rejected the resource (INVALID_ARGUMENT): retrying the same spec cannot help."""


class ConfigClient:
    def __init__(self, settings: OperatorSettings):
        self.settings = settings
        self._channel: grpc.aio.Channel | None = None

    @property
    def address(self) -> str:
        return self.settings.aggregator

    def _stub(self) -> config_pb2_grpc.ConfigServiceStub:
        if self._channel is None:
            # Created lazily, in the operator's event loop (a grpc.aio channel belongs to one loop).
            self._channel = open_channel(self.settings)
        return config_pb2_grpc.ConfigServiceStub(self._channel)

    async def apply(self, request: config_pb2.ApplyRequest) -> config_pb2.ApplyResponse:
        try:
            # Fails fast while the aggregator is away (no wait_for_ready): kopf spaces the retries, and
            # the status says at once that the push is pending.
            return await self._stub().Apply(request, timeout=self.settings.push_timeout.total_seconds(),
                                            metadata=call_metadata(self.settings))
        except grpc.aio.AioRpcError as e:
            message = f"{e.code().name}: {e.details() or 'no details'}"
            if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise Refused(message) from e
            raise Unreachable(f"aggregator {self.address}: {message}") from e

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
