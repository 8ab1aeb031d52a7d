"""The packages as a user gets them: `python -m build` makes the sdist and, from it, the wheel; the
wheel goes into a fresh virtualenv (no system site-packages, nothing of the checkout), whose
`sysmon up` serves a dashboard that renders in Chromium."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import async_playwright, expect

from sysmon.core.embedded import free_port
from tests.e2e.test_dashboard import CHROMIUM, CHROMIUM_ARGS
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
ASSETS = ["index.html", "app.js", "style.css", "vendor/uPlot.esm.js", "vendor/swagger-ui/swagger-ui-bundle.js"]

pytestmark = pytest.mark.slow


def _clean_env() -> dict[str, str]:
    """The environment of a user's shell: no SYSMON_* settings, no path into the checkout."""
    drop = ("SYSMON_", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sdist, then the wheel built from that sdist (what `python -m build` does with no flags)."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], check=True,
                   capture_output=True, env=_clean_env(), timeout=300)
    return out


@pytest.fixture(scope="session")
def installed(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel and its declared dependencies, as `pip install` gives them."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    (wheel,) = dist.glob("sysmon-*.whl")
    # This environment's pip, working on the new interpreter (--python): the same resolution and
    # installs, without first bootstrapping a pip inside. --no-compile: bytecode is written on import.
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                    "--quiet", "--no-compile", str(wheel)], check=True, env=_clean_env(), timeout=600)
    return venv


def test_the_sdist_and_the_wheel_carry_the_built_dashboard(dist: Path) -> None:
    (sdist,) = dist.glob(f"sysmon-{VERSION}.tar.gz")
    (wheel,) = dist.glob(f"sysmon-{VERSION}-py3-none-any.whl")
    with tarfile.open(sdist) as tar:
        in_sdist = set(tar.getnames())
    with zipfile.ZipFile(wheel) as whl:
        in_wheel = set(whl.namelist())
    for asset in ASSETS:
        assert f"sysmon-{VERSION}/sysmon/gateway/static/{asset}" in in_sdist, asset
        assert f"sysmon/gateway/static/{asset}" in in_wheel, asset
    assert "sysmon/core/migrations/0001_base.sql" in in_wheel
    assert not any(n.startswith(("tests/", "web/", "bench/")) for n in in_wheel)


class InstalledUp:
    """`sysmon up` from the virtualenv's console script, run from a directory outside the checkout."""

    def __init__(self, venv: Path, data_dir: Path):
        self.venv = venv
        self.data_dir = data_dir
        self.port = free_port()
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> InstalledUp:
        self.proc = await asyncio.create_subprocess_exec(
            str(self.venv / "bin" / "sysmon"), "up", "--data-dir", str(self.data_dir),
            "--listen", f"127.0.0.1:{free_port()}", "--metrics-listen", f"127.0.0.1:{free_port()}",
            "--port", str(self.port), "--alerts-listen", "127.0.0.1:0", "--interval", "1s",
            "--host-id", "wheel-host", "--labels", "installed=wheel",
            cwd=self.data_dir, env=_clean_env(), start_new_session=True,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        self._reader = asyncio.create_task(self._read())
        try:
            await wait_for(lambda: "Press Ctrl-C to stop." in self.lines or self.proc.returncode is not None,
                           within=120, message="sysmon up (from the wheel) to be ready")
            assert self.proc.returncode is None, "\n".join(self.lines)
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        code = await self._stop()
        assert code == 0, "\n".join(self.lines[-30:])

    async def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.lines.append(line.decode(errors="replace").rstrip("\n"))

    async def _stop(self) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # Ctrl-C, to the servers it started too
        async with asyncio.timeout(60):
            code = await self.proc.wait()
        if self._reader is not None:
            await self._reader
        return code


@pytest.fixture
async def up_from_wheel(installed: Path, short_dir: Path) -> AsyncIterator[InstalledUp]:
    async with InstalledUp(installed, short_dir) as up:
        yield up


def test_the_installed_command_reports_the_version_and_runs_from_the_virtualenv(installed: Path) -> None:
    out = subprocess.run([str(installed / "bin" / "sysmon"), "--version"], capture_output=True, text=True,
                         check=True, env=_clean_env(), cwd=installed, timeout=60)
    assert out.stdout.strip() == f"sysmon {VERSION}"
    where = subprocess.run([str(installed / "bin" / "python"), "-c", "import sysmon; print(sysmon.__file__)"],
                           capture_output=True, text=True, check=True, env=_clean_env(), cwd=installed, timeout=60)
    assert Path(where.stdout.strip()).is_relative_to(installed), where.stdout


async def test_up_from_the_wheel_serves_a_dashboard_that_renders(up_from_wheel: InstalledUp) -> None:
    url = f"http://127.0.0.1:{up_from_wheel.port}/"
    assert any(re.match(rf"\s+dashboard\s+{re.escape(url)}", line) for line in up_from_wheel.lines)
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        index = await http.get("/")
        assert index.status_code == 200, index.text  # 503 "the dashboard is not built" before
        assert (await http.get("/assets/vendor/uPlot.esm.js")).status_code == 200

    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: `make test` installs it (apt-get install chromium)")
    errors: list[str] = []
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(url)
            tile = page.locator('.tile[data-host="wheel-host"]')
            await expect(tile.locator(".badge")).to_have_text("up", timeout=30_000)
            await expect(tile.locator(".chip")).to_have_text(["installed=wheel"])
            await expect(page.locator("#summary")).to_contain_text("1 of 1 hosts")
            await tile.click()
            await expect(page.locator("#host-name")).to_have_text("wheel-host")
            await expect(page.locator('[data-panel="cpu-total"] canvas')).to_have_count(1)
        finally:
            await browser.close()
    assert not errors, f"JavaScript errors: {errors}"


def test_a_build_that_cannot_make_the_dashboard_stops_and_says_how_to_fix_it(tmp_path: Path) -> None:
    """A checkout without the built assets, on a machine without Node.js: no wheel that would serve
    / as 503, but an error that names the way out."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "sysmon", src / "sysmon", ignore=shutil.ignore_patterns("static", "__pycache__"))
    shutil.copytree(ROOT / "web", src / "web", ignore=shutil.ignore_patterns("node_modules"))
    for f in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / f, src / f)
    env = _clean_env() | {"PATH": str(Path(sys.executable).parent)}  # python and pip; no node, no npm
    run = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path / "out"), str(src)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode != 0
    assert "the dashboard (web/) is not built and Node.js is not on PATH" in run.stdout + run.stderr
    assert "make assets" in run.stdout + run.stderr
    assert not list((tmp_path / "out").glob("*.whl"))
