"""`sysmon up --rules FILE`: the rules file goes in through Apply, the alerts service runs, and this
machine's own collector fires a rule at a real webhook receiver."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import asyncpg
import httpx
import pytest

from sysmon.core.embedded import free_port
from tests.helpers import wait_for
from tests.integration.test_alerts import Receiver

RULES = """
apiVersion: sysmon.dev/v1alpha1
kind: AlertRule
metadata: {{name: up-is-up}}
spec:
  metric: system.uptime
  condition: {{op: ">", threshold: 0}}
  annotations: {{summary: "{{{{ host }}}} has been up {{{{ value | humanize_duration }}}}"}}
  actions:
    - webhook: {{url: "{url}/hook"}}
"""


async def _run_up(args: list[str], env: dict[str, str], lines: list[str]) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sysmon", "up", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env=env,
    )

    async def read() -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            lines.append(line.decode().rstrip("\n"))

    asyncio.get_running_loop().create_task(read())
    return proc


@pytest.mark.slow
async def test_up_applies_a_rules_file_and_alerts(pg_dsn: str, redis_url: str, pool: asyncpg.Pool,
                                                  short_dir: Path) -> None:
    receiver = await Receiver().start()
    data_dir = short_dir
    rules = data_dir / "rules.yaml"
    rules.write_text(RULES.format(url=receiver.url))
    alerts_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYSMON_")} | {
        "SYSMON_POSTGRES_URL": pg_dsn, "SYSMON_REDIS_URL": redis_url}
    lines: list[str] = []
    proc = await _run_up(["--data-dir", str(data_dir), "--listen", f"127.0.0.1:{free_port()}", "--metrics-listen",
                          f"127.0.0.1:{free_port()}", "--port", str(free_port()), "--interval", "200ms",
                          "--host-id", "up-host", "--rules", str(rules), "--alerts-listen",
                          f"127.0.0.1:{alerts_port}"], env, lines)
    try:
        await wait_for(lambda: "Press Ctrl-C to stop." in lines or proc.returncode is not None, within=90,
                       message="sysmon up ready")
        assert proc.returncode is None, "\n".join(lines)
        assert any("alerts" in line and "1 rules from files" in line for line in lines), lines
        await wait_for(lambda: receiver.statuses() == ["firing"], within=30, message="the rule fired")
        alert = receiver.alerts()[0]
        assert alert["labels"]["host"] == "up-host"
        assert alert["annotations"]["summary"].startswith("up-host has been up ")
        async with httpx.AsyncClient() as http:
            ready = await http.get(f"http://127.0.0.1:{alerts_port}/readyz")
            assert ready.status_code == 200
            metrics = (await http.get(f"http://127.0.0.1:{alerts_port}/metrics")).text
            assert "sysmon_alerts_rules_loaded 1.0" in metrics
        spec = await pool.fetchval("SELECT spec FROM config_resources WHERE kind = 'AlertRule' AND name = 'up-is-up'")
        assert spec["metric"] == "system.uptime"

        async def rule_names() -> set[str]:
            rows = await pool.fetch("SELECT name FROM config_resources WHERE kind = 'AlertRule'")
            return {r["name"] for r in rows}

        def logged(text: str) -> int:
            return sum(text in line for line in lines)

        # Editing the file while up runs: a broken edit is reported, naming the field, and the
        # rules in force stay; the fixed edit replaces them (the renamed rule's old name is deleted).
        rules.write_text(RULES.format(url=receiver.url).replace('op: ">"', 'op: "=>"'))
        await wait_for(lambda: any("rules not reloaded" in line and "spec.condition.op" in line for line in lines),
                       within=30, message="the broken edit reported")
        assert await rule_names() == {"up-is-up"}
        rules.write_text(RULES.format(url=receiver.url).replace("up-is-up", "up-still-up"))

        async def renamed() -> bool:
            return await rule_names() == {"up-still-up"}

        await wait_for(renamed, within=30, message="the edited file applied")
        await wait_for(lambda: logged("rules reloaded: 1 from") == 1, within=10, message="the reload logged")
        # SIGHUP re-reads them even unchanged, as Prometheus does.
        proc.send_signal(signal.SIGHUP)
        await wait_for(lambda: logged("rules reloaded: 1 from") == 2, within=30, message="reloaded on SIGHUP")
        assert proc.returncode is None
    finally:
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(60):
            code = await proc.wait()
        await receiver.stop()
    assert code == 0, "\n".join(lines[-30:])


@pytest.mark.slow
async def test_up_refuses_a_bad_rules_file_naming_the_field(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES.format(url="http://x").replace('op: ">"', 'op: "=>"'))
    lines: list[str] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYSMON_")}
    proc = await _run_up(["--data-dir", str(tmp_path / "d"), "--rules", str(rules)], env, lines)
    async with asyncio.timeout(60):
        code = await proc.wait()
    await asyncio.sleep(0)
    assert code != 0
    await wait_for(lambda: any("spec.condition.op" in line for line in lines), within=5, message="error printed")
    assert not (tmp_path / "d" / "postgres").exists()  # nothing was started
