"""The gateway: REST queries, WebSocket live push and the dashboard (FastAPI)."""
