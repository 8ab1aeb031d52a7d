"""Acknowledgements a request waits for, beside those that go to collectors' control streams.

A collector learns the fate of its batches asynchronously, over ControlService.Connect. An HTTP
or unary gRPC sender (Prometheus remote write, OTLP) holds its request open instead, and is
answered once its batches are committed, sent back or refused. Receipts sits in front of the
control hub as the ingest's AckSink: keys somebody waits for resolve that waiter's future, every
other key goes on to the hub.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from sysmon.aggregator.ingest import AckSink, BatchKey


@dataclass(frozen=True)
class NotStored(Exception):
    """A batch was not committed: sent back (`retry_after_ms` > 0, try again) or refused for good."""

    code: grpc.StatusCode
    message: str
    retry_after_ms: int = 0

    def __str__(self) -> str:
        return self.message


class Receipts:
    def __init__(self, hub: AckSink):
        self.hub = hub
        self._waiting: dict[BatchKey, asyncio.Future[None]] = {}

    def expect(self, key: BatchKey) -> asyncio.Future[None]:
        """A future that resolves when the batch is committed (or raises NotStored)."""
        fut = asyncio.get_running_loop().create_future()
        self._waiting[key] = fut
        return fut

    def forget(self, key: BatchKey) -> None:
        """The waiter gave up (its request ended): a late ack of the key has nobody to tell."""
        self._waiting.pop(key, None)

    def _settle(self, keys: Sequence[BatchKey], error: NotStored | None) -> list[BatchKey]:
        others = []
        for k in keys:
            fut = self._waiting.pop(k, None)
            if fut is None:
                others.append(k)
            elif not fut.done():
                if error is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(error)
        return others

    def ack(self, keys: Sequence[BatchKey]) -> None:
        others = self._settle(keys, None)
        if others:
            self.hub.ack(others)

    def nack(self, keys: Sequence[BatchKey], retry_after_ms: int, reason: str,
             code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        others = self._settle(keys, NotStored(code, reason, max(1, retry_after_ms)))
        if others:
            self.hub.nack(others, retry_after_ms, reason, code)

    def reject(self, host_id: str, session_id: str, seq: int, code: grpc.StatusCode, message: str) -> None:
        if self._settle([(host_id, session_id, seq)], NotStored(code, message)):
            self.hub.reject(host_id, session_id, seq, code, message)
