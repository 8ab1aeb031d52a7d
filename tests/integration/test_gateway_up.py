"""`sysmon up` runs the gateway too: prints the dashboard URL, serves it without a token on loopback,
and refuses a non-loopback address without one."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

import httpx
import pytest

from sysmon.core.embedded import free_port
from tests.helpers import wait_for


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SYSMON_")}


@pytest.mark.slow
async def test_up_serves_the_dashboard_on_loopback() -> None:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="sysmon-gw-up-") as d:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sysmon", "up", "--data-dir", d, "--listen", f"127.0.0.1:{free_port()}",
            "--metrics-listen", "", "--interval", "200ms", "--host-id", "gw-up-host", "--port", str(port),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=_env(),
        )
        lines: list[str] = []

        async def read() -> None:
            assert proc.stdout is not None
            async for line in proc.stdout:
                lines.append(line.decode().rstrip())

        reader = asyncio.create_task(read())
        try:
            await wait_for(lambda: any("Press Ctrl-C" in x for x in lines), within=90, message="sysmon up ready")
            dashboard = next(x for x in lines if x.strip().startswith("dashboard"))
            assert f"http://127.0.0.1:{port}/" in dashboard
            assert "token off: loopback" in dashboard
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                assert (await http.get("/")).status_code == 200

                async def up() -> bool:
                    hosts = (await http.get("/api/v1/hosts")).json()["hosts"]
                    return any(h["host"] == "gw-up-host" and h["status"] == "up" for h in hosts)

                await wait_for(up, within=30, message="this machine listed as up")
                assert (await http.get("/readyz")).status_code == 200
        finally:
            proc.send_signal(2)
            async with asyncio.timeout(60):
                assert await proc.wait() == 0
            await reader


def test_up_refuses_a_public_gateway_without_a_token(tmp_path: Path) -> None:
    import subprocess

    # Checked before any server starts, so this is quick.
    from sysmon.core.settings import GatewaySettings
    from sysmon.gateway.app import ConfigurationError, resolve_authenticator

    with pytest.raises(ConfigurationError, match="without authentication"):
        resolve_authenticator(GatewaySettings(listen="0.0.0.0:8080"), loopback_exempt=True)
    assert not resolve_authenticator(GatewaySettings(listen="127.0.0.1:8080"), loopback_exempt=True).enabled
    assert resolve_authenticator(GatewaySettings(listen="0.0.0.0:8080", token="t"), loopback_exempt=True).enabled
    assert resolve_authenticator(GatewaySettings(listen="0.0.0.0:8080", token_secret="s" * 32),
                                 loopback_exempt=True).enabled
    out = subprocess.run([sys.executable, "-m", "sysmon", "gateway", "--postgres-url", "postgresql://x/y",
                          "--redis-url", "redis://127.0.0.1:1", "--listen", "0.0.0.0:0"],
                         capture_output=True, text=True, env=_env(), timeout=60, check=False)
    assert out.returncode != 0
    assert "without authentication" in out.stderr
