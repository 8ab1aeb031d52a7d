"""`make lambda`'s zip, unpacked as Lambda unpacks it, run by an interpreter that sees nothing else:
it loads the handler and stores a recorded SQS event in a real PostgreSQL."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import asyncpg

from sysmon.pipeline import wire
from tests.pipeline_helpers import recorded_events, sqs_event

ROOT = Path(__file__).resolve().parent.parent.parent

RUN = """
import json, sys
from sysmon.pipeline.lambda_handler import handler
class Context:
    function_name = "sysmon-pipeline"; memory_limit_in_mb = 256; aws_request_id = "r"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:sysmon-pipeline"
print("RESPONSE " + json.dumps(handler(json.load(sys.stdin), Context())))
"""


def _builder():
    spec = importlib.util.spec_from_file_location("build_lambda", ROOT / "scripts" / "build_lambda.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_deployment_zip_runs_the_handler_on_its_own(tmp_path: Path, pg_dsn: str) -> None:
    build = _builder()
    # For this interpreter, so that it can load the package's compiled wheels (Lambda's is the default).
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    r = await asyncio.to_thread(build.build, tmp_path / "fn.zip", python, "x86_64")
    assert r["zipped_bytes"] < build.MAX_ZIPPED
    assert r["unzipped_bytes"] < build.MAX_UNZIPPED
    task_root = tmp_path / "task"
    with zipfile.ZipFile(tmp_path / "fn.zip") as z:
        names = z.namelist()
        z.extractall(task_root)
    # The handler's share of sysmon and nothing else: no other component, no tests.
    assert not [n for n in names if n.startswith(("sysmon/aggregator", "sysmon/gateway", "sysmon/alerts",
                                                  "sysmon/agent", "sysmon/operator", "tests/"))]
    assert not [n for n in names if n.startswith(("pytest", "moto", "numpy", "grpc"))]

    events = recorded_events(["node-z"], frames=6, per_batch=3)
    event = sqs_event([wire.encode(events)])
    # -S -E: no site-packages, no PYTHON* variables; the unpacked zip is the whole world, as on Lambda.
    env = {"PATH": os.environ.get("PATH", ""), "SYSMON_POSTGRES_URL": pg_dsn}
    code = f"import sys; sys.path.insert(0, {str(task_root)!r})\n{RUN}"
    out = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-S", "-E", "-c", code], input=json.dumps(event), capture_output=True,
        text=True, env=env, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    response = [line.split(" ", 1)[1] for line in out.stdout.splitlines() if line.startswith("RESPONSE ")]
    assert [json.loads(r) for r in response] == [{"batchItemFailures": []}]
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("SELECT sum(count) FROM pipeline_rollup_1m") == sum(
            len(f.values) for ev in events for f in ev.frames)
    finally:
        await conn.close()
