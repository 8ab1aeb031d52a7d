"""Build the Lambda deployment package of sysmon.pipeline.lambda_handler: `make lambda`.

    python scripts/build_lambda.py [--python 3.12] [--arch x86_64|arm64] [--out build/sysmon-pipeline-lambda.zip]

The zip holds sysmon.core, sysmon.pb and sysmon.pipeline (no other component, no tests) and the
handler's own dependencies as manylinux wheels for the Lambda Python runtime
(pip --platform manylinux2014_<arch> --only-binary=:all:, pinned as pyproject.toml pins them).
boto3 is left out: the runtime has it, and only Secrets Manager uses it. Lambda's limits are
checked (50 MB zipped for a direct upload, 250 MB unzipped); the sizes are printed, with a JSON line last.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What the handler imports beyond the standard library (tests/unit/test_pipeline_package.py checks it).
DEPENDENCIES = ("protobuf", "asyncpg", "aws-lambda-powertools")
PACKAGES = ("sysmon/core", "sysmon/pb", "sysmon/pipeline")
FILES = ("sysmon/__init__.py", "sysmon/py.typed")
MAX_ZIPPED = 50 * 1000 * 1000  # a direct upload (UpdateFunctionCode with ZipFile)
MAX_UNZIPPED = 250 * 1000 * 1000
# 2000-01-01: the same sources make the same zip
EPOCH = (2000, 1, 1, 0, 0, 0)


def pins() -> list[str]:
    """The dependencies' requirement strings as pyproject.toml writes them (project or the aws extra)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + project["optional-dependencies"]["aws"]
    out = []
    for name in DEPENDENCIES:
        match = [s for s in specs if re.match(rf"{re.escape(name)}\b(?![-\w])", s)]
        if not match:
            raise SystemExit(f"{name} is not a dependency in pyproject.toml")
        out.append(match[0])
    return out


def install(target: Path, python: str, arch: str) -> None:
    platform = {"x86_64": "manylinux2014_x86_64", "arm64": "manylinux2014_aarch64"}[arch]
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target", str(target),
         "--platform", platform, "--implementation", "cp", "--python-version", python, "--only-binary=:all:",
         *pins()],
        check=True,
    )
    # Nothing the function runs: installers' metadata caches, bytecode of another interpreter, pip's bin/.
    for junk in [*target.rglob("__pycache__"), target / "bin"]:
        shutil.rmtree(junk, ignore_errors=True)


def copy_sources(target: Path) -> None:
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, target / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for f in FILES:
        shutil.copy2(ROOT / f, target / f)


def write_zip(src: Path, out: Path) -> tuple[int, int, int]:
    out.parent.mkdir(parents=True, exist_ok=True)
    unzipped = files = 0
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for p in sorted(src.rglob("*")):
            if p.is_dir():
                continue
            info = zipfile.ZipInfo(str(p.relative_to(src)), EPOCH)
            info.external_attr = (0o755 if p.stat().st_mode & 0o111 else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, p.read_bytes())
            unzipped += p.stat().st_size
            files += 1
    return out.stat().st_size, unzipped, files


def build(out: Path, python: str, arch: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="sysmon-lambda-") as d:
        src = Path(d) / "pkg"
        install(src, python, arch)
        copy_sources(src)
        if not (src / "sysmon" / "pipeline" / "lambda_handler.py").exists():
            raise SystemExit("the handler module is missing from the package")
        zipped, unzipped, files = write_zip(src, out)
    return {"zip": str(out), "zipped_bytes": zipped, "unzipped_bytes": unzipped, "files": files,
            "python": python, "arch": arch, "handler": "sysmon.pipeline.lambda_handler.handler"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", default="3.12", help="the Lambda runtime's Python (python3.12 -> 3.12)")
    ap.add_argument("--arch", default="x86_64", choices=["x86_64", "arm64"])
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "sysmon-pipeline-lambda.zip")
    args = ap.parse_args()
    r = build(args.out, args.python, args.arch)
    print(f"{r['zip']}: {r['zipped_bytes'] / 1e6:.1f} MB zipped (limit {MAX_ZIPPED / 1e6:.0f} MB), "
          f"{r['unzipped_bytes'] / 1e6:.1f} MB unzipped (limit {MAX_UNZIPPED / 1e6:.0f} MB), {r['files']} files, "
          f"Python {r['python']} {r['arch']}")
    problems = []
    if r["zipped_bytes"] > MAX_ZIPPED:
        problems.append(f"zipped {r['zipped_bytes']} bytes > {MAX_ZIPPED} (Lambda's direct upload limit)")
    if r["unzipped_bytes"] > MAX_UNZIPPED:
        problems.append(f"unzipped {r['unzipped_bytes']} bytes > {MAX_UNZIPPED} (Lambda's limit)")
    print(json.dumps(r | {"ok": not problems}))
    if problems:
        raise SystemExit("; ".join(problems))


if __name__ == "__main__":
    main()
