"""The Lambda handler loads only what its deployment package holds (see `make lambda`)."""

from __future__ import annotations

import subprocess
import sys

# What scripts/build_lambda.py puts in the zip besides sysmon.core, sysmon.pb and sysmon.pipeline,
# and what the Lambda Python runtime provides.
PACKAGED = {"google", "asyncpg", "aws_lambda_powertools", "jmespath", "typing_extensions",
            "boto3", "botocore", "s3transfer", "dateutil", "urllib3", "six"}


def test_the_handler_imports_only_packaged_modules() -> None:
    code = ("import sys, sysmon.pipeline.lambda_handler; "
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=True).stdout.split())
    # Cython's runtime modules come with asyncpg; the editable install's finder only with `pip install -e`.
    third_party = {m for m in loaded - set(sys.stdlib_module_names) - {"sysmon", "_distutils_hack", "__main__"}
                   if not m.startswith(("__editable__", "_cython_", "cython_runtime"))}
    assert third_party <= PACKAGED, third_party - PACKAGED
    code = ("import sys, sysmon.pipeline.lambda_handler; "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('sysmon.'))))")
    ours = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert all(m.startswith(("sysmon.core", "sysmon.pb", "sysmon.pipeline")) for m in ours), ours
