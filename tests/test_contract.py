"""Repository-level guards: generated code matches the .proto files; components stay apart."""

from __future__ import annotations

import filecmp
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_current(tmp_path: Path) -> None:
    _load_generator().generate(tmp_path)
    fresh, committed = tmp_path / "v1", ROOT / "sysmon" / "pb" / "v1"
    fresh_files = sorted(p.name for p in fresh.iterdir())
    committed_files = sorted(p.name for p in committed.iterdir() if p.name != "__pycache__")
    assert fresh_files == committed_files, "run `make proto` and commit sysmon/pb"
    _, mismatch, errors = filecmp.cmpfiles(fresh, committed, fresh_files, shallow=False)
    assert not mismatch, f"stale generated modules {mismatch}: run `make proto` and commit sysmon/pb"
    assert not errors


def test_components_do_not_import_each_other() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    if not lint.exists():
        pytest.fail("import-linter is not installed: `make test` installs the dev extras")
    result = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_collector_loads_only_what_it_uses() -> None:
    """The collector runs on every machine within 60 MiB: the server-side libraries (storage,
    templates, web) stay out of its process."""
    code = "import sys, sysmon.cli, sysmon.agent.collector; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    heavy = {"asyncpg", "redis", "numpy", "jinja2", "fastapi", "uvicorn", "httpx", "kopf", "kubernetes", "yaml"}
    assert not heavy & set(out)
