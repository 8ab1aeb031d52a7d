"""The demo profile's TLS front (docker-compose.yml's Caddyfile, as compose renders it, run by
Debian's Caddy) before a real gateway and aggregator, as the Terraform demo serves them on its
Elastic IP with Caddy's own CA: the dashboard and the API over HTTPS, HTTP sent there, and a
remote collector streaming to the aggregator through Caddy's TLS with the token."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
import yaml

from sysmon.core.embedded import free_port
from tests.conftest import AggregatorFactory
from tests.gateway_helpers import running_gateway
from tests.helpers import running_collector, wait_for

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "demo-proxy-test-token-0123456789abcdef"
HOST = "127.0.0.1"


def render_caddyfile(*, grpc_port: int, gateway: str, aggregator: str) -> str:
    """The compose file's Caddyfile with compose's interpolation done (the demo on an IP address:
    Caddy's internal CA) and the compose services' names replaced by where this test runs them."""
    content = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["configs"]["caddyfile"]["content"]
    for var, value in {"${SYSMON_DEMO_HOST:-localhost}": HOST, "${SYSMON_DEMO_TLS:-internal}": "internal",
                       "${SYSMON_DEMO_GRPC_PORT:-50443}": str(grpc_port)}.items():
        assert var in content
        content = content.replace(var, value)
    assert "${" not in content
    for service, here in {"gateway:8080": gateway, "aggregator:50051": aggregator}.items():
        assert service in content
        content = content.replace(service, here)
    return content


@dataclass
class Caddy:
    https: str
    http: str
    root_ca: Path


@pytest.fixture
def caddy_binary() -> str:
    exe = shutil.which("caddy")
    if exe is None:
        pytest.fail("Debian's caddy is missing: `make test` installs it (apt-get install caddy)")
    return exe


@contextlib.asynccontextmanager
async def running_caddy(exe: str, d: Path, site: str) -> AsyncIterator[Caddy]:
    http_port, https_port = free_port(), free_port()
    # Test-only global options: its own ports and storage, no admin endpoint, no system trust store.
    (d / "Caddyfile").write_text(
        f"{{\n\tadmin off\n\thttp_port {http_port}\n\thttps_port {https_port}\n\tskip_install_trust\n"
        f"\tstorage file_system {d / 'data'}\n}}\n\n{site}")
    log = (d / "caddy.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        exe, "run", "--config", str(d / "Caddyfile"), "--adapter", "caddyfile",
        stdout=log, stderr=subprocess.STDOUT, env={"HOME": str(d), "PATH": "/usr/bin:/bin"})
    root = d / "data" / "pki" / "authorities" / "local" / "root.crt"
    caddy = Caddy(f"https://{HOST}:{https_port}", f"http://{HOST}:{http_port}", root)

    async def serving_tls() -> bool:
        assert proc.returncode is None, (d / "caddy.log").read_text()[-3000:]
        if not root.exists():
            return False
        try:
            async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(root)), timeout=2) as c:
                await c.get(f"{caddy.https}/healthz")
        except (httpx.HTTPError, ssl.SSLError, OSError):
            return False
        return True

    try:
        await wait_for(serving_tls, within=30, interval=0.1, message="caddy serving TLS with its own CA")
        yield caddy
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
        log.close()


async def test_the_demo_serves_the_dashboard_over_https_and_collectors_through_tls(
        caddy_binary: str, start_aggregator: AggregatorFactory, pg_dsn: str, redis_url: str, tmp_path: Path) -> None:
    agg = await start_aggregator(token=TOKEN)
    grpc_port = free_port()
    async with running_gateway(pg_dsn, redis_url, token=TOKEN) as gw:
        site = render_caddyfile(grpc_port=grpc_port, gateway=gw.url.removeprefix("http://").rstrip("/"),
                                aggregator=agg.address)
        async with running_caddy(caddy_binary, tmp_path, site) as caddy:
            ctx = ssl.create_default_context(cafile=str(caddy.root_ca))
            async with httpx.AsyncClient(base_url=caddy.https, verify=ctx, timeout=10) as https:
                page = await https.get("/")
                assert page.status_code == 200
                assert "/assets/app.js" in page.text
                assert (await https.get("/api/v1/hosts")).status_code == 401  # the token, still
                # A collector elsewhere: TLS against the demo's CA, to Caddy's gRPC port, with the token.
                async with running_collector(f"{HOST}:{grpc_port}", host_id="through-caddy", token=TOKEN,
                                             tls_ca=caddy.root_ca):
                    async def up() -> bool:
                        r = await https.get("/api/v1/hosts", headers={"Authorization": f"Bearer {TOKEN}"})
                        return any(h["host"] == "through-caddy" and h["status"] == "up" for h in r.json()["hosts"])

                    await wait_for(up, within=30, interval=0.2, message="the collector's host up behind caddy")
                    r = await https.get("/api/v1/hosts/through-caddy", headers={"Authorization": f"Bearer {TOKEN}"})
                    assert r.status_code == 200
                    # Stored, so acknowledged back through the proxy's stream: the history grows.
                    db = await asyncpg.connect(pg_dsn)
                    try:
                        async def stored() -> int:
                            return await db.fetchval("SELECT count(*) FROM samples_raw JOIN series USING (series_id) "
                                                     "WHERE host_id = 'through-caddy'")
                        first = await wait_for(stored, within=30, interval=0.2, message="samples in PostgreSQL")
                        await wait_for(lambda: _grew(stored, first), within=30, interval=0.2, message="more samples")
                    finally:
                        await db.close()
            async with httpx.AsyncClient(timeout=10) as plain:
                redirect = await plain.get(f"{caddy.http}/")
                assert redirect.status_code in (301, 308)
                assert redirect.headers["location"].startswith("https://")


async def _grew(count, than: int) -> bool:
    return await count() > than
