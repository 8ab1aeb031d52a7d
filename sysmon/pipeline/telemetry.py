"""The SQS exporter's own metrics (its /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SENT_MESSAGES = Counter("sysmon_exporter_sqs_sent_messages_total", "SQS messages accepted by the queue")
SENT_SAMPLES = Counter("sysmon_exporter_sqs_sent_samples_total", "Samples in SQS messages accepted by the queue")
SENT_BYTES = Counter("sysmon_exporter_sqs_sent_bytes_total", "Bytes of SQS messages accepted (as SQS counts them)")
CALLS = Counter("sysmon_exporter_sqs_calls_total", "SendMessageBatch calls", ["outcome"])
FAILED = Counter(
    "sysmon_exporter_sqs_failed_messages_total",
    "Message sends that failed and are tried again (throttling, 5xx, endpoint away, refused)", ["reason"],
)
UNRESOLVED = Counter("sysmon_exporter_sqs_unresolved_samples_total",
                     "Samples left out because no description of their series was found (bus or hot tier)")
ENTRIES = Counter("sysmon_exporter_sqs_bus_entries_total", "Bus entries forwarded and acknowledged")
LAG = Gauge("sysmon_exporter_sqs_lag_entries",
            "Bus entries not yet forwarded: delivered but unacknowledged, plus not yet delivered")
LAG_SECONDS = Gauge("sysmon_exporter_sqs_lag_seconds",
                    "Time between the newest bus entry delivered to the exporter and the newest published")
CALL_SECONDS = Histogram("sysmon_exporter_sqs_call_seconds", "One SendMessageBatch call, retries excluded",
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
MESSAGES_PER_CALL = Histogram("sysmon_exporter_sqs_messages_per_call", "Messages in one SendMessageBatch call",
                              buckets=(1, 2, 3, 4, 5, 6, 7, 8, 9, 10))
