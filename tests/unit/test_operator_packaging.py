"""The image, compose file and Tiltfile, read as text (no Docker engine or Tilt here): the
promises they make — non-root, the sysmon CLI as entrypoint, the dashboard built in, no secrets,
health checks everywhere, Tilt's live update landing where the code runs."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def stages(dockerfile: str) -> list[list[str]]:
    """Instructions per stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", dockerfile)
    out: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            out.append([])
        if out:
            out[-1].append(line)
    return out


def test_the_image_is_multi_stage_non_root_with_the_cli_as_entrypoint() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    web, build, runtime = stages(dockerfile)
    assert web[0] == "FROM ${NODE_IMAGE} AS web"
    assert "ARG NODE_IMAGE=node:22-bookworm-slim" in dockerfile
    assert web[0].endswith("AS web")
    assert any("npm ci" in i for i in web)
    assert any("npm run build" in i for i in web)
    assert any(i.startswith("COPY --from=web /src/sysmon/gateway/static/") for i in build)
    assert build[0] == "FROM ${BASE_IMAGE} AS build"
    assert runtime[0] == "FROM ${BASE_IMAGE}"
    assert "ARG BASE_IMAGE=python:${PYTHON_VERSION}-slim-bookworm" in dockerfile
    assert "USER 10001:10001" in runtime
    assert 'ENTRYPOINT ["sysmon"]' in runtime
    # The image runs the wheel (the one `python -m build` makes, dashboard inside), installed into /app.
    assert any("pip wheel" in i and "pip install --no-deps --no-compile --target /app /dist/sysmon-" in i
               for i in build)
    assert any(i.startswith("COPY --from=build") and i.endswith("/app/ /app/") for i in runtime)
    assert not any(i.startswith(("RUN apt-get", "RUN pip")) for i in runtime), "nothing built at runtime"
    # The user the manifests run as is the image's.
    from sysmon.operator.manifests import RUN_AS
    assert f"--uid {RUN_AS}" in " ".join(runtime)


def test_the_image_installs_the_dependencies_and_boto3_for_the_sqs_exporter() -> None:
    """What the build stage pip-installs, by running its own command on this pyproject.toml: every
    dependency, and boto3, without which a fleet's spec.exporters.sqs pod (`sysmon export sqs`) exits."""
    import subprocess
    import sys
    import tomllib

    requirements = []
    for script in re.findall(r'RUN python -c "(.+?)"\s', (ROOT / "Dockerfile").read_text()):
        out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
        requirements += out.stdout.splitlines()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    boto3 = [r for r in project["optional-dependencies"]["aws"] if r.startswith("boto3")]
    assert boto3
    assert requirements == project["dependencies"] + boto3


def test_the_build_context_holds_what_the_dockerfile_copies_and_no_more() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignore, "everything is left out unless named"
    allowed = {line[1:] for line in ignore if line.startswith("!")}
    copies = re.findall(r"^COPY (?!--from)(.+) \S+$", (ROOT / "Dockerfile").read_text(), re.M)
    for sources in copies:
        for src in sources.split():
            src = src.rstrip("/")
            assert any(a == src or a.startswith(src + "/") for a in allowed), \
                f"{src} is copied but .dockerignore leaves it out"
    # web/build.mjs reads only what is let through.
    assert {"web/package.json", "web/package-lock.json", "web/build.mjs", "web/src"} <= allowed


def test_compose_runs_the_demo_without_a_secret_in_the_file() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    compose = yaml.safe_load(text)
    services = compose["services"]
    assert set(services) == {"redis", "timescaledb", "aggregator", "gateway", "alerts", "collector", "caddy"}
    # Caddy (TLS in front of the gateway) only in the demo profile, the one port-80/443 service.
    assert services["caddy"]["profiles"] == ["demo"]
    assert "reverse_proxy gateway:8080" in compose["configs"]["caddyfile"]["content"]
    assert services["timescaledb"]["image"].startswith("timescale/timescaledb:")
    for name, svc in services.items():
        assert "healthcheck" in svc, name
    for name in ("aggregator", "gateway", "alerts", "collector"):
        svc = services[name]
        assert svc["command"] == [{"collector": "agent"}.get(name, name)]
        assert svc["read_only"] is True
        assert svc["cap_drop"] == ["ALL"]
        assert svc["user"] == "10001:10001"
    env = services["aggregator"]["environment"]
    assert env["SYSMON_TOKEN"] == "${SYSMON_TOKEN:?set SYSMON_TOKEN}"
    assert "${SYSMON_DB_PASSWORD:?" in env["SYSMON_POSTGRES_URL"]
    # Published ports only on loopback.
    for name, svc in services.items():
        for port in svc.get("ports", []) if name != "caddy" else []:
            assert port.startswith("127.0.0.1:"), port
    assert services["collector"]["pid"] == "host"
    assert "/:/host:ro,rslave" in services["collector"]["volumes"]


def test_tilt_builds_applies_the_dev_overlay_forwards_the_gateway_and_live_updates() -> None:
    tilt = (ROOT / "Tiltfile").read_text()
    assert "kustomize('kustomize/overlays/dev')" in tilt
    assert "k8s_kind('MonitoredFleet', image_json_path='{.spec.image}')" in tilt
    assert "port-forward service/sysmon-gateway 8080:8080" in tilt
    # The synced path is where the image runs the code from (PYTHONPATH=/app).
    assert "sync('sysmon', '/app/sysmon')" in tilt
    assert "PYTHONPATH=/app" in (ROOT / "Dockerfile").read_text()
    assert "'APP_OWNER': '10001'" in tilt
