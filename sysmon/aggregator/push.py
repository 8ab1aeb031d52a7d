"""MetricsService.Push: the client stream of metric batches."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator

import grpc

from sysmon.aggregator import telemetry
from sysmon.aggregator.control import ControlHub
from sysmon.aggregator.ingest import Ingest, now_ms
from sysmon.aggregator.normalize import BatchError, StreamDecoder
from sysmon.core.metrics import Limits
from sysmon.pb.v1 import metrics_pb2, metrics_pb2_grpc

log = logging.getLogger(__name__)

REJECTIONS_KEPT = 20


class MetricsServicer(metrics_pb2_grpc.MetricsServiceServicer):
    def __init__(self, ingest: Ingest, hub: ControlHub, limits: Limits):
        self.ingest = ingest
        self.hub = hub
        self.limits = limits

    async def Push(
        self, request_iterator: AsyncIterator[metrics_pb2.MetricBatch], context: grpc.aio.ServicerContext
    ) -> metrics_pb2.PushSummary:
        decoder = StreamDecoder(self.limits)
        received = rejected = 0
        recent: deque[metrics_pb2.BatchRejection] = deque(maxlen=REJECTIONS_KEPT)
        async for msg in request_iterator:
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
            telemetry.BATCHES.labels("accepted").inc()
            await self.ingest.submit(batch)
        return metrics_pb2.PushSummary(batches_received=received, batches_rejected=rejected,
                                       rejections=list(recent))
