# kaitopy developer targets. Every target works on a fresh machine after `make install`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help install install-inference install-inference-cpu binaries cluster-up cluster-down cluster-status test test-unit \
        test-integration test-e2e chaos lint manifests check-manifests run bench bench-inference \
        image-runtime clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

install: $(PY)  ## create .venv and install kaitopy with its dev tools
	$(PIP) install -q -e '.[dev]'

install-inference-cpu: $(PY)  ## .venv plus the CPU model server (torch's CPU wheel from ../shared/wheels)
	$(PIP) install -q --find-links ../shared/wheels torch==2.13.0+cpu -e '.[dev,inference-cpu]'

binaries:  ## get or build etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kwok
	bash hack/ensure-binaries.sh

cluster-up:  ## start the local control plane (reuses a running one)
	$(PYTHON) hack/localcluster.py up

cluster-down:  ## stop every process of the local control plane and remove its data
	$(PYTHON) hack/localcluster.py down

cluster-status:  ## show the local control plane's processes and health
	$(PYTHON) hack/localcluster.py status

test: install binaries  ## all tests: unit, integration and e2e
	$(PY) -m pytest tests

test-unit: install  ## unit tests only (no cluster)
	$(PY) -m pytest -m unit tests

test-integration: install binaries  ## integration tests against the control plane
	$(PY) -m pytest -m integration tests

test-e2e: install binaries  ## end-to-end tests (operator + control plane)
	$(PY) -m pytest -m e2e tests

lint: install  ## ruff and mypy --strict on src, import layering
	$(VENV)/bin/ruff check src tests hack
	$(VENV)/bin/ruff format --check src tests hack
	$(VENV)/bin/mypy --strict src
	$(VENV)/bin/lint-imports

manifests: install  ## regenerate manifests/crds from the pydantic models
	@if [ -f hack/gen_manifests.py ]; then $(PY) hack/gen_manifests.py; else echo "no generator yet"; fi

check-manifests: install  ## fail when manifests/crds differs from what the models generate
	$(PY) hack/gen_manifests.py --check

run: install binaries  ## the main job: local control plane + operator, phi-3 example to WORKSPACESUCCEEDED
	$(PY) hack/demo.py

bench: install binaries  ## benchmarks (prints figures and ratios; writes bench/results/*.json)
	$(PIP) install -q -e '.[dev,bench]'
	@mkdir -p bench/results
	@shopt -s nullglob; for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

bench-inference: install-inference-cpu  ## kaitopy serve --engine vllm vs bare vLLM, CPU tiny model (vLLM CPU venv); bench/results/inference*.json
	@mkdir -p bench/results
	$(PY) bench/bench_inference.py
	$(PY) bench/bench_inference.py --pin

VLLM_IMAGE ?= vllm/vllm-openai:v0.32.0
RUNTIME_IMAGE ?= kaitopy-runtime:dev
image-runtime:  ## build the model-server image (vLLM base + kaitopy serve) with docker
	@if ! command -v docker >/dev/null 2>&1; then \
		echo "image-runtime: docker is not installed here; not building $(RUNTIME_IMAGE)"; \
	elif ! docker info >/dev/null 2>&1; then \
		echo "image-runtime: docker is installed but its daemon is not reachable; not building $(RUNTIME_IMAGE)"; \
	else docker build -f docker/runtime/Dockerfile --build-arg VLLM_IMAGE=$(VLLM_IMAGE) -t $(RUNTIME_IMAGE) . ; fi

chaos: install binaries  ## the fault and load suite, every scenario with 3 seeds (a short run is part of make test)
	$(PY) -m tests.chaos.suite --full --seeds 3

clean:  ## remove the virtual environment and caches (not the binary cache)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
