"""MetricsService.Push: the client stream of metric batches."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import AsyncIterator

import grpc

from sysmon.aggregator import auth, telemetry
from sysmon.aggregator.control import ControlHub
from sysmon.aggregator.host_limits import HostBudget, HostSeries
from sysmon.aggregator.ingest import Ingest, now_ms
from sysmon.aggregator.normalize import BatchError, StreamDecoder
from sysmon.core.metrics import Limits
from sysmon.pb.v1 import metrics_pb2, metrics_pb2_grpc

log = logging.getLogger(__name__)

REJECTIONS_KEPT = 20
ACCEPTED = telemetry.BATCHES.labels("accepted")  # once, not per batch


class MetricsServicer(metrics_pb2_grpc.MetricsServiceServicer):
    def __init__(self, ingest: Ingest, hub: ControlHub, limits: Limits):
        self.ingest = ingest
        self.hub = hub
        self.limits = limits
        self.host_series = HostSeries(limits.max_series_per_host)
        self.budget = HostBudget(limits.max_samples_per_second_per_host, limits.max_sample_burst_per_host)
        self._budget_pruned = time.monotonic()

    async def Push(
        self, request_iterator: AsyncIterator[metrics_pb2.MetricBatch], context: grpc.aio.ServicerContext
    ) -> metrics_pb2.PushSummary:
        decoder = StreamDecoder(self.limits, may_send_for=auth.current().may_speak_for, host_series=self.host_series)
        received = rejected = 0
        recent: deque[metrics_pb2.BatchRejection] = deque(maxlen=REJECTIONS_KEPT)
        try:
            async for msg in request_iterator:
                msg = auth.checked(msg, context)
                received += 1
                try:
                    batch = decoder.decode(msg, now_ms())
                except BatchError as e:
                    telemetry.REJECTIONS.labels(e.code.name).inc()
                    if e.fatal:
                        telemetry.BATCHES.labels("fatal").inc()
                        log.warning("Push stream from %s ended: %s", context.peer(), e.message)
                        await context.abort(e.code, e.message)
                    rejected += 1
                    telemetry.BATCHES.labels("rejected").inc()
                    recent.append(metrics_pb2.BatchRejection(seq=msg.seq, code=e.code.value[0], message=e.message))
                    self.hub.reject(msg.host_id, msg.session_id, msg.seq, e.code, e.message)
                    continue
                if not self._within_budget(batch.host_id, batch.key, batch.sample_count):
                    continue
                ACCEPTED.inc()
                await self.ingest.submit(batch)
        finally:
            decoder.release()
        return metrics_pb2.PushSummary(batches_received=received, batches_rejected=rejected,
                                       rejections=list(recent))

    def _within_budget(self, host: str, key: tuple[str, str, int], n: int) -> bool:
        now = time.monotonic()
        wait = self.budget.take(host, n, now)
        if now - self._budget_pruned > 60.0:
            self._budget_pruned = now
            self.budget.forget_idle(now)
        if not wait:
            return True
        # Sent back, not refused: the collector keeps the batch and sends it again when told.
        telemetry.OVER_BUDGET.inc()
        self.hub.nack([key], max(1, int(wait * 1000)),
                      f"host {host} is over its budget of {self.limits.max_samples_per_second_per_host} samples/s",
                      code=grpc.StatusCode.RESOURCE_EXHAUSTED)
        return False
