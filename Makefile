# raftmq: `make run` serves a local 3-node cluster; `make test` runs every check.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint fmt typecheck pytest compose-check system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/raftmq cluster up --nodes 3 --data-dir .raftmq-data --base-port 7100

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -n auto -q

# Debian packages the tests use: docker-compose validates the compose file (no
# Docker engine runs in CI), nftables cuts links between network namespaces in
# the chaos partition tests, chromium runs the dashboard browser test headless.
# Installed only when missing; those tests say why they skip when a package
# cannot be had.
SYSTEM_PACKAGES := docker-compose:docker-compose nft:nftables chromium:chromium

system-deps:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do \
	  command -v "$${pair%%:*}" >/dev/null || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; } \
	    || echo "could not install$$missing; tests that need them will say so"; \
	fi

compose-check: system-deps
	RAFTMQ_CLUSTER_SECRET=validate docker-compose -f docker-compose.cluster.yml config -q

test: lint typecheck compose-check pytest

clean:
	rm -rf $(VENV) .raftmq-data .mypy_cache .ruff_cache .pytest_cache
