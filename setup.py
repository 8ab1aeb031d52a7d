"""The packaging hook: an sdist or wheel built from a checkout carries the built dashboard.

Everything else is declared in pyproject.toml. sysmon/gateway/static is built from web/ (npm ci,
node build.mjs) and is not committed; without this hook a wheel built before `make assets` would
serve / as 503 "the dashboard is not built". From a checkout the hook builds the assets when they
are missing or older than web/; from an unpacked sdist (no web/, assets inside) it uses those.
An editable install is left alone: it serves the source tree, where `make assets` builds them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
WEB = HERE / "web"
STATIC = HERE / "sysmon" / "gateway" / "static"
# Set to build a package without the dashboard on purpose (its / then answers 503).
SKIP = "SYSMON_BUILD_WITHOUT_DASHBOARD"


class DashboardMissing(RuntimeError):
    pass


def _newest(paths: list[Path]) -> float:
    return max((p.stat().st_mtime for p in paths if p.is_file()), default=0.0)


def _stale() -> bool:
    built = STATIC / ".built"
    if not (STATIC / "index.html").is_file():
        return True
    if not (WEB / "build.mjs").is_file() or not built.is_file():
        return False  # an unpacked sdist: the assets it carries are the ones
    sources = [*WEB.joinpath("src").rglob("*"), WEB / "build.mjs", WEB / "package-lock.json"]
    return _newest(sources) > built.stat().st_mtime


def ensure_dashboard() -> None:
    if os.environ.get(SKIP) == "1" or not _stale():
        return
    if not (WEB / "build.mjs").is_file():
        raise DashboardMissing(
            f"{STATIC} holds no built dashboard and there is no web/ to build it from; "
            f"build from a checkout or an sdist made from one (or set {SKIP}=1)")
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        raise DashboardMissing(
            "the dashboard (web/) is not built and Node.js is not on PATH: install nodejs and npm, "
            f"or run `make assets` first (or set {SKIP}=1 for a package whose / answers 503)")
    lock = WEB / "node_modules" / ".package-lock.json"
    if not lock.is_file() or lock.stat().st_mtime < (WEB / "package-lock.json").stat().st_mtime:
        subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
                       cwd=WEB, check=True)
    subprocess.run([node, "build.mjs"], cwd=WEB, check=True)


class BuildPy(build_py):
    def run(self) -> None:
        if not getattr(self, "editable_mode", False):
            ensure_dashboard()
            # The file list may have been taken before the assets existed.
            self.__dict__.pop("data_files", None)
        super().run()


class Sdist(sdist):
    def run(self) -> None:
        # Before egg_info lists the package's files, so that the assets are among them.
        ensure_dashboard()
        super().run()


setup(cmdclass={"build_py": BuildPy, "sdist": Sdist})
