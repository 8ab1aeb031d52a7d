"""A real Prometheus (Debian's package) as a test peer: configured, started, asked, stopped."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from sysmon.core.embedded import free_port


def binary(name: str = "prometheus") -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: `make test` installs Debian's prometheus package")
    return path


class Prometheus:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path):
        self.proc = proc
        self.url = url
        self.log = log

    def query(self, expr: str, **params: Any) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr, **params}, timeout=10)
        r.raise_for_status()
        return r.json()["data"]["result"]

    def raw_samples(self, expr: str, window: str = "1h") -> list[tuple[int, float]]:
        """The samples Prometheus itself stores for one series (a selector matching one series)."""
        result = self.query(f"{expr}[{window}]")
        if not result:
            return []
        (series,) = result
        return [(round(float(t) * 1000), float(v)) for t, v in series["values"]]

    def log_tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log.exists() else ""


@contextlib.contextmanager
def running_prometheus(work: Path, config: dict[str, Any]) -> Iterator[Prometheus]:
    work.mkdir(parents=True, exist_ok=True)
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = work / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary(), f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        yield Prometheus(proc, f"http://127.0.0.1:{port}", log)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
