"""deploy/terraform, checked without an AWS account: every file parses, every variable and output
is documented, checkov finds nothing that is not suppressed with a reason, and (where Terraform and
its AWS provider are on the machine) `terraform validate` and the module's own `terraform test`,
which plans and applies the demo against a mocked provider."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import hcl2
import pytest

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM = ROOT / "deploy" / "terraform"
CHECKOV = ROOT / ".venv" / "checkov" / "bin" / "checkov"
# Where this machine keeps the AWS provider (Terraform cannot download providers here).
PROVIDER_MIRROR = Path(os.environ.get("SYSMON_TF_PROVIDER_MIRROR", "/opt/tf-plugins"))
TF_FILES = sorted(TERRAFORM.rglob("*.tf"))


def _unquote(v: object) -> object:
    """python-hcl2 keeps a string literal's quotes."""
    return v[1:-1] if isinstance(v, str) and len(v) >= 2 and v[0] == v[-1] == '"' else v


def _blocks(kind: str) -> list[tuple[Path, str, dict]]:
    out = []
    for path in TF_FILES:
        with path.open() as f:
            for block in hcl2.load(f).get(kind, []):
                for name, body in block.items():
                    out.append((path, _unquote(name), body))
    return out


def test_the_layout_has_the_demo_module_and_its_environment() -> None:
    names = {p.relative_to(TERRAFORM).as_posix() for p in TF_FILES}
    for f in ("modules/demo/main.tf", "modules/demo/variables.tf", "modules/demo/outputs.tf",
              "environments/demo/main.tf", "environments/demo/backend.tf", "environments/demo/outputs.tf"):
        assert f in names
    demo = TERRAFORM / "environments" / "demo"
    assert (demo / "terraform.tfvars.example").is_file()
    assert (demo / "backend.hcl.example").is_file()


@pytest.mark.parametrize("path", TF_FILES, ids=lambda p: p.relative_to(TERRAFORM).as_posix())
def test_every_terraform_file_parses(path: Path) -> None:
    with path.open() as f:
        assert hcl2.load(f), f"{path} is empty"


def test_every_variable_has_a_type_and_a_description_and_every_output_a_description() -> None:
    variables = _blocks("variable")
    outputs = _blocks("output")
    assert len(variables) > 20
    assert len(outputs) > 8
    for path, name, body in variables:
        assert body.get("type"), f"{path.name}: variable {name} has no type"
        assert str(_unquote(body.get("description", ""))).strip(), f"{path.name}: variable {name} has no description"
    for path, name, body in outputs:
        assert str(_unquote(body.get("description", ""))).strip(), f"{path.name}: output {name} has no description"


def test_the_state_is_remote_in_s3_and_the_lambda_pipeline_has_a_slot() -> None:
    with (TERRAFORM / "environments" / "demo" / "backend.tf").open() as f:
        backends = hcl2.load(f)["terraform"][0]["backend"]
    assert any('"s3"' in b or "s3" in b for b in backends)
    example = (TERRAFORM / "environments" / "demo" / "backend.hcl.example").read_text()
    assert "use_lockfile = true" in example
    assert "encrypt      = true" in example
    main = (TERRAFORM / "environments" / "demo" / "main.tf").read_text()
    assert re.search(r'source\s+= "\.\./\.\./modules/pipeline"', main)


def test_no_secret_is_a_terraform_value() -> None:
    """The token and the database password are SSM SecureStrings the instance reads at boot (the
    pipeline's credentials a Secrets Manager secret named by its ARN):
    nothing in Terraform (so nothing in its state or in the user data) holds them."""
    for path, name, _ in _blocks("variable"):
        assert not any(w in name for w in ("password", "secret")) or name.endswith(("_parameter", "_arn")), \
            f"{path.name}: variable {name} looks like a secret"
    resources = {next(iter(r)) for path in TF_FILES for r in hcl2.load(path.open()).get("resource", [])}
    resources = {_unquote(r) for r in resources}
    assert "aws_ssm_parameter" not in resources
    template = (TERRAFORM / "modules" / "demo" / "cloud-init.yaml.tftpl").read_text()
    assert "aws ssm get-parameter" in template
    assert "--with-decryption" in template
    assert "/run/sysmon/.env" in template


def test_checkov_passes_with_reasoned_suppressions_only() -> None:
    if not CHECKOV.exists():
        pytest.fail(f"{CHECKOV} is missing: `make test` installs it (a virtualenv of its own)")
    # Every framework checkov finds there (--skip-download: no call home for policies or guidelines).
    run = subprocess.run([str(CHECKOV), "-d", str(TERRAFORM), "--skip-download", "--output", "json"],
                         capture_output=True, text=True, timeout=300)
    out = json.loads(run.stdout)
    reports = out if isinstance(out, list) else [out]  # one report per framework that found files
    assert "terraform" in {r["check_type"] for r in reports}
    failed = [(c["check_id"], c["resource"], c["file_path"]) for r in reports for c in r["results"]["failed_checks"]]
    assert not failed, failed
    assert run.returncode == 0, run.stderr[-2000:]
    assert sum(r["summary"]["passed"] for r in reports) > 50
    skipped = [c for r in reports for c in r["results"]["skipped_checks"]]
    assert len(skipped) == sum(r["summary"]["skipped"] for r in reports)
    for check in skipped:
        reason = (check.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason) > 20, f"{check['check_id']} on {check['resource']} is suppressed without a reason"


def _terraform_env(tmp_path: Path) -> dict[str, str]:
    rc = tmp_path / "terraformrc"
    rc.write_text(f'''provider_installation {{
  filesystem_mirror {{
    path    = "{PROVIDER_MIRROR}"
    include = ["registry.terraform.io/hashicorp/aws"]
  }}
  direct {{
    exclude = ["registry.terraform.io/hashicorp/aws"]
  }}
}}
''')
    return {**os.environ, "TF_CLI_CONFIG_FILE": str(rc), "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1",
            "TF_DATA_DIR": str(tmp_path / "data")}


@pytest.fixture
def terraform() -> str:
    tf = shutil.which("terraform")
    if tf is None or not (PROVIDER_MIRROR / "registry.terraform.io" / "hashicorp" / "aws").is_dir():
        pytest.skip("terraform or a local mirror of its AWS provider is not on this machine "
                    f"(looked on PATH and in {PROVIDER_MIRROR}); the checks above still ran")
    return tf


def _tf(tf: str, cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    run = subprocess.run([tf, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"terraform {' '.join(args)}:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return run


def test_terraform_validates_the_demo_environment(terraform: str, tmp_path: Path) -> None:
    # A copy: init writes a lock file and a working directory beside the configuration.
    copy = tmp_path / "deploy" / "terraform"  # the module finds ../../../../docker-compose.yml
    shutil.copytree(TERRAFORM, copy)
    shutil.copy(ROOT / "docker-compose.yml", tmp_path / "docker-compose.yml")
    env = _terraform_env(tmp_path)
    _tf(terraform, copy, env, "fmt", "-check", "-recursive")
    root = copy / "environments" / "demo"
    _tf(terraform, root, env, "init", "-backend=false", "-input=false")
    assert "The configuration is valid" in _tf(terraform, root, env, "validate", "-no-color").stdout


def test_terraform_validates_the_pipeline_module(terraform: str, tmp_path: Path) -> None:
    copy = tmp_path / "pipeline"
    shutil.copytree(TERRAFORM / "modules" / "pipeline", copy)
    env = _terraform_env(tmp_path)
    _tf(terraform, copy, env, "init", "-backend=false", "-input=false")
    assert "The configuration is valid" in _tf(terraform, copy, env, "validate", "-no-color").stdout


def test_terraform_test_plans_the_module_against_a_mocked_aws(terraform: str, tmp_path: Path) -> None:
    copy = tmp_path / "deploy" / "terraform"  # the module finds ../../../../docker-compose.yml
    shutil.copytree(TERRAFORM, copy)
    shutil.copy(ROOT / "docker-compose.yml", tmp_path / "docker-compose.yml")
    module = copy / "modules" / "demo"
    env = _terraform_env(tmp_path)
    _tf(terraform, module, env, "init", "-backend=false", "-input=false")
    out = _tf(terraform, module, env, "test", "-no-color").stdout
    assert " 0 failed" in out, out
    assert "passed" in out, out


def _render_cloud_init() -> dict:
    """The module's user data as templatefile() makes it, with example values."""
    import base64
    import re

    import yaml

    values = {
        "region": "eu-west-1", "token_param": "/sysmon/demo/token", "db_param": "/sysmon/demo/db-password",
        "data_volume_id": "vol0123456789abcdef0",
        "compose_b64": base64.b64encode((ROOT / "docker-compose.yml").read_bytes()).decode(),
        "settings_b64": base64.b64encode(b"SYSMON_IMAGE=r/s:1\nCOMPOSE_PROFILES=demo\n").decode(),
    }
    text = (TERRAFORM / "modules" / "demo" / "cloud-init.yaml.tftpl").read_text()
    names = set(re.findall(r"(?<!\$)\$\{(\w+)\}", text))
    assert names == set(values), f"the template uses {names - set(values)} that main.tf does not pass"
    assert "%{" not in text
    rendered = re.sub(r"(?<!\$)\$\{(\w+)\}", lambda m: values[m.group(1)], text).replace("$${", "${")
    assert rendered.startswith("#cloud-config\n")
    return yaml.safe_load(rendered)


def test_the_cloud_init_user_data_installs_docker_mounts_the_data_volume_and_starts_the_stack() -> None:
    config = _render_cloud_init()
    assert {"docker.io", "docker-compose-v2"} <= set(config["packages"])
    files = {f["path"]: f for f in config["write_files"]}
    assert json.loads(files["/etc/docker/daemon.json"]["content"])["data-root"] == "/var/lib/sysmon/docker"
    docker_dropin = files["/etc/systemd/system/docker.service.d/sysmon-data.conf"]["content"]
    assert "RequiresMountsFor=/var/lib/sysmon" in docker_dropin
    assert files["/opt/sysmon/docker-compose.yml"]["encoding"] == "b64"
    unit = files["/etc/systemd/system/sysmon.service"]["content"]
    assert "ExecStartPre=/usr/local/sbin/sysmon-env" in unit
    assert "--env-file /run/sysmon/.env up --detach --no-build" in unit
    assert "systemctl enable --now sysmon.service" in config["runcmd"]
    # Every shell script in it is valid sh: the boot command and the secrets reader.
    for script in (config["bootcmd"][0], files["/usr/local/sbin/sysmon-env"]["content"]):
        run = subprocess.run(["sh", "-n"], input=script, capture_output=True, text=True, timeout=30)
        assert run.returncode == 0, run.stderr
    assert "vol0123456789abcdef0" in config["bootcmd"][0]
    assert "mkfs.ext4" in config["bootcmd"][0]
