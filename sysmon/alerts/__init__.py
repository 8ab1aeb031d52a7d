"""The alerts service: rule evaluation, the alert state machine, notifiers."""
