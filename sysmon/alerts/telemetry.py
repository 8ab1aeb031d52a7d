"""The alerts service's own metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RULES = Gauge("sysmon_alerts_rules_loaded", "Alert rules in effect")
CONFIG_VERSION = Gauge("sysmon_alerts_config_version", "Configuration version of the rules in effect")
EVALUATIONS = Counter("sysmon_alerts_evaluations_total", "Rule evaluations (one rule on one series' window)")
SAMPLES = Counter("sysmon_alerts_samples_total", "Samples consumed from the bus")
EVENTS = Counter("sysmon_alerts_events_total", "SamplesEvents consumed from the bus", ["outcome"])
STALE_SAMPLES = Counter("sysmon_alerts_stale_samples_total",
                        "Samples too old to alert on (a collector's replay); they only fill windows")
TRANSITIONS = Counter("sysmon_alerts_transitions_total", "Alert state transitions", ["state"])
ACTIVE = Gauge("sysmon_alerts_active", "Alerts pending or firing now", ["state"])
NOTIFICATIONS_QUEUED = Counter("sysmon_alerts_notifications_queued_total", "Notifications written to the outbox")
NOTIFICATIONS_SENT = Counter("sysmon_alerts_notifications_sent_total", "Notifications delivered", ["receiver_type"])
NOTIFICATIONS_FAILED = Counter(
    "sysmon_alerts_notifications_failed_total", "Notification attempts that failed (retried unless given up)",
    ["receiver_type"],
)
NOTIFICATIONS_DROPPED = Counter(
    "sysmon_alerts_notifications_dropped_total", "Notifications given up on (refused, or past the deadline)",
    ["receiver_type"],
)
OUTBOX = Gauge("sysmon_alerts_outbox_pending", "Notifications waiting for delivery")
KEEPALIVES = Counter("sysmon_alerts_alertmanager_resends_total", "Firing alerts re-sent to Alertmanager",
                     ["outcome"])
STEP_SECONDS = Histogram(
    "sysmon_alerts_step_seconds", "Evaluation of one bus batch, including storing its transitions",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
LAG_SECONDS = Gauge("sysmon_alerts_lag_seconds", "Age of the newest evaluated batch (aggregator store time)")
PERSIST_FAILURES = Counter("sysmon_alerts_persist_failures_total", "Failed attempts to store transitions")
UP = Gauge("sysmon_alerts_ready", "1 while the service has its rules, its state and PostgreSQL")
PARTITIONS = Gauge("sysmon_alerts_partitions_owned",
                   "Partitions of the samples topic (shares of the fleet, by host) this replica owns "
                   "(Kafka partitions, or Redis shards by lease)")
FENCED = Counter("sysmon_alerts_fenced_changes_total",
                 "Alert changes not stored because their shard's lease ran out before they were")
