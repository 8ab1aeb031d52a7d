"""The Kubernetes operator (kopf): MonitoredFleet and AlertRule reconciled into workloads and config."""
