"""Live push over WebSocket: one bus subscription per topic, fanned out to bounded client queues."""
