"""The aggregator's own metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

BATCHES = Counter("sysmon_aggregator_batches_total", "Batches received on Push streams", ["outcome"])
REJECTIONS = Counter("sysmon_aggregator_rejections_total", "Batches rejected at the edge", ["code"])
SAMPLES_STORED = Counter("sysmon_aggregator_samples_stored_total", "Samples committed to PostgreSQL")
DUPLICATES = Counter("sysmon_aggregator_duplicate_batches_total", "Replayed batches already stored")
COMMITS = Histogram(
    "sysmon_aggregator_commit_seconds", "Duration of one group commit",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
COMMIT_FAILURES = Counter("sysmon_aggregator_commit_failures_total", "Group commits that failed")
NACKS = Counter("sysmon_aggregator_nacked_batches_total", "Batches handed back for retry")
QUEUED = Gauge("sysmon_aggregator_queued_samples", "Samples waiting for PostgreSQL")
HOT_FAILURES = Counter("sysmon_aggregator_hot_failures_total", "Hot tier or bus writes that failed")
HOT_SKIPPED = Counter(
    "sysmon_aggregator_hot_skipped_batches_total", "Batches not sent to the hot tier because it fell behind"
)
COLLECTORS = Gauge("sysmon_aggregator_connected_collectors", "Collectors with an open control stream")
STORAGE_UP = Gauge("sysmon_aggregator_storage_up", "1 while PostgreSQL accepts writes")
PARTITIONS_DROPPED = Counter("sysmon_aggregator_partitions_dropped_total", "Partitions dropped by retention")
CONFIG_VERSION = Gauge("sysmon_aggregator_config_version", "Configuration version served to watchers")
MALFORMED = Counter("sysmon_aggregator_malformed_messages_total", "Requests that were not valid protobuf", ["method"])
OVER_BUDGET = Counter(
    "sysmon_aggregator_over_budget_batches_total", "Batches sent back because their host exceeded its samples/s budget"
)
DUPLICATE_SAMPLES = Counter(
    "sysmon_aggregator_duplicate_samples_total",
    "Samples not stored because their series already has a sample at that time (sent again by another session)",
)
POISON_BATCHES = Counter(
    "sysmon_aggregator_unstorable_batches_total", "Batches PostgreSQL refused on their own data, rejected alone"
)
STREAMS_REPLACED = Counter(
    "sysmon_aggregator_control_streams_replaced_total", "Control streams ended because a newer one took their session"
)
JOB_RUNS = Counter("sysmon_aggregator_storage_job_runs_total", "Runs of the storage jobs", ["job", "outcome"])
JOB_FAILING = Gauge("sysmon_aggregator_storage_job_failing", "1 while a storage job's last run failed", ["job"])
JOB_LAST_SUCCESS = Gauge(
    "sysmon_aggregator_storage_job_last_success_timestamp_seconds", "When a storage job last ran well", ["job"]
)
TIMESCALE_JOB_FAILING = Gauge(
    "sysmon_aggregator_timescaledb_job_failing", "1 while a TimescaleDB job's last run failed", ["proc", "hypertable"]
)
SEALED_SAMPLES = Counter("sysmon_aggregator_sealed_samples_total", "Raw samples sealed into blocks (and merged)")
SEALED_BYTES = Counter("sysmon_aggregator_sealed_bytes_total", "Encoded bytes of the blocks sealed")
SEAL_SECONDS = Counter("sysmon_aggregator_seal_seconds_total", "Time spent sealing")
SEALED_DUPLICATES = Counter(
    "sysmon_aggregator_sealed_duplicate_samples_total",
    "Late samples not merged into a sealed block because it already had a sample of their series at that time",
)
ROLLUP_SKIPPED = Counter(
    "sysmon_aggregator_rollup_series_skipped_total",
    "Series whose rollup buckets over a range could not be computed from their data and were skipped", ["tier"],
)
FOREIGN_SAMPLES = Counter(
    "sysmon_aggregator_foreign_samples_total",
    "Samples received over Prometheus remote write and OTLP, by protocol and outcome (stored, refused)",
    ["protocol", "outcome"],
)
FOREIGN_REQUESTS = Counter(
    "sysmon_aggregator_foreign_requests_total",
    "Prometheus remote write and OTLP requests, by protocol and HTTP status (gRPC codes mapped to it)",
    ["protocol", "status"],
)
STALE_MARKERS = Counter(
    "sysmon_aggregator_stale_markers_total",
    "Prometheus staleness markers received (they end a series; not stored as samples)",
)
