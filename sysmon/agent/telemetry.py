"""The collector's own metrics, read from its live state when scraped."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from sysmon.agent.collector import Collector


class CollectorMetrics:
    """A prometheus-client custom collector over one Collector."""

    def __init__(self, collector: Collector):
        self.c = collector

    def collect(self):
        c = self.c
        yield CounterMetricFamily("sysmon_agent_batches", "Batches sampled", value=c.stats.batches)
        yield CounterMetricFamily("sysmon_agent_samples", "Samples taken", value=c.stats.samples)
        yield CounterMetricFamily("sysmon_agent_acked_batches", "Batches the aggregator stored",
                                  value=c.buffer.acked)
        yield CounterMetricFamily("sysmon_agent_dropped_batches",
                                  "Oldest batches dropped because the buffer was full", value=c.buffer.dropped)
        yield CounterMetricFamily("sysmon_agent_rejected_batches", "Batches the aggregator refused as invalid",
                                  value=c.buffer.rejected)
        yield CounterMetricFamily("sysmon_agent_connection_failures", "Sessions that ended in an error",
                                  value=c.stats.failures)
        yield CounterMetricFamily("sysmon_agent_sampler_errors", "Metric group reads that failed",
                                  value=c.sampler.errors)
        yield GaugeMetricFamily("sysmon_agent_buffered_batches", "Batches waiting for acknowledgement",
                                value=len(c.buffer))
        yield GaugeMetricFamily("sysmon_agent_connected", "1 while connected to an aggregator",
                                value=1 if c.connected.is_set() else 0)
        yield GaugeMetricFamily("sysmon_agent_interval_seconds", "Collection interval", value=c.interval)
        yield GaugeMetricFamily("sysmon_agent_config_version", "Configuration version applied",
                                value=c.config_version)


def register(collector: Collector, registry: CollectorRegistry = REGISTRY) -> CollectorMetrics:
    metrics = CollectorMetrics(collector)
    registry.register(metrics)
    return metrics
