# NbdOperator — build, run and test everything from here. `make help` lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CONFIGURATION ?= Release
DOTNET ?= dotnet
ARTIFACTS := $(CURDIR)/artifacts
# Benchmarks are tests with the Benchmark trait: `make bench-*` runs them, `make test` leaves them out.
TEST_ARGS ?= --filter-not-trait Category=Benchmark
SIDECAR := $(ARTIFACTS)/sidecar/nbd-sidecar
OPERATOR := $(ARTIFACTS)/operator/nbd-operator
CHART := charts/nbd-operator
export DOTNET_CLI_TELEMETRY_OPTOUT := 1
export DOTNET_NOLOGO := 1
export DOTNET_SKIP_FIRST_TIME_EXPERIENCE := 1

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build everything; leaves artifacts/sidecar/nbd-sidecar and artifacts/operator/nbd-operator
	@tests/testenv/install-build-tools.sh
	$(DOTNET) build NbdOperator.sln -c $(CONFIGURATION) -nologo -clp:NoSummary -v:q
	rm -rf $(ARTIFACTS)/sidecar
	$(DOTNET) publish sidecar/src/NbdSidecar -c $(CONFIGURATION) --use-current-runtime -nologo -v:q -o $(ARTIFACTS)/sidecar
	$(DOTNET) publish operator/src/NbdOperator -c $(CONFIGURATION) --no-build -nologo -v:q -o $(ARTIFACTS)/operator

.PHONY: deps
deps: ## Install what the tests need (NBD peers via apt when root); idempotent
	@tests/testenv/install-peers.sh

.PHONY: lint
lint: ## Check formatting and code style (dotnet format --verify-no-changes)
	$(DOTNET) format NbdOperator.sln --verify-no-changes --no-restore -v:q

.PHONY: format
format: ## Apply formatting and code-style fixes
	$(DOTNET) format NbdOperator.sln -v:q

.PHONY: manifests
manifests: ## Generate crds/*.yaml from the C# API types (operator/src/NbdOperator/Api) and copy them into the chart
	$(DOTNET) run --project operator/src/NbdOperator -c $(CONFIGURATION) -v:q -- generate-crds crds >/dev/null
	rm -f $(CHART)/files/crds/*.yaml
	mkdir -p $(CHART)/files/crds
	cp crds/*.yaml $(CHART)/files/crds/

.PHONY: check-manifests
check-manifests: ## Fail if crds/*.yaml or the chart's copies differ from what `make manifests` generates
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(DOTNET) run --project operator/src/NbdOperator -c $(CONFIGURATION) -v:q -- generate-crds "$$tmp" >/dev/null; \
	if ! diff -ru --exclude=samples "$$tmp" crds >&2 || [ -n "$$(cd crds && ls *.yaml | grep -vxFf <(cd $$tmp && ls))" ]; then \
	  echo "check-manifests: crds/ is out of date; run 'make manifests' and commit the result" >&2; exit 1; \
	fi; \
	if ! diff -ru "$$tmp" $(CHART)/files/crds >&2; then \
	  echo "check-manifests: $(CHART)/files/crds/ differs from crds/; run 'make manifests' and commit the result" >&2; exit 1; \
	fi

.PHONY: chart-lint
chart-lint: ## helm lint --strict and helm template the chart with its defaults and each ci/*-values.yaml
	@tools=$$(tests/testenv/helm.sh); \
	for values in "" $(CHART)/ci/*-values.yaml; do \
	  "$$tools/helm" lint --strict --quiet $(CHART) $${values:+-f "$$values"} >/dev/null || \
	    { "$$tools/helm" lint --strict $(CHART) $${values:+-f "$$values"} >&2; exit 1; }; \
	  "$$tools/helm" template chart-lint $(CHART) --namespace nbd-system $${values:+-f "$$values"} >/dev/null; \
	done; \
	echo "chart-lint: $(CHART) passes helm lint --strict and renders with defaults and $$(ls $(CHART)/ci/*-values.yaml | wc -l) value sets"

.PHONY: run-operator
run-operator: ## Same as `make run MODE=operator`
	@$(MAKE) --no-print-directory run MODE=operator ARGS="$(ARGS)"

.PHONY: test
test: deps build lint check-manifests chart-lint ## Install test dependencies, build, and run every test
	$(DOTNET) test --solution NbdOperator.sln -c $(CONFIGURATION) --no-build --results-directory $(ARTIFACTS)/test-results $(TEST_ARGS)

.PHONY: run
run: build ## Serve a sample sparse disk on 127.0.0.1:10809 (Ctrl-C stops); MODE=operator: run the operator against the current kubeconfig context (ARGS="--namespace vms")
	@sidecar/scripts/run-local.sh $(if $(filter operator,$(MODE)),--operator $(ARGS))

.PHONY: bench
bench: bench-server bench-copy bench-import ## Every benchmark, each beside the reference tools (BENCH_ARGS=--quick for a smoke run)
	@if [ "$$(id -u)" = 0 ] && [ -c /dev/fuse ]; then $(MAKE) --no-print-directory bench-attach; \
	else echo "bench: skipping bench-attach (needs root and /dev/fuse)"; fi

.PHONY: bench-server
bench-server: build ## Benchmark the server against qemu-nbd and nbdkit
	@tests/bench/server-bench.sh $(BENCH_ARGS)

.PHONY: bench-copy
bench-copy: build ## Benchmark nbd-sidecar copy against nbdcopy and qemu-img convert (BENCH_ARGS=--quick for a smoke run)
	tests/bench/copy-bench.sh --sidecar $(SIDECAR) $(BENCH_ARGS)

.PHONY: bench-import
bench-import: build ## Benchmark an end-to-end NbdImport (operator + pod runner) against nbdcopy (BENCH_ARGS=--quick for a smoke run)
	tests/bench/import-bench.sh $(BENCH_ARGS)

.PHONY: bench-attach
bench-attach: build ## Benchmark the node plugin's fuse attach path against nbdcopy on the export (root, /dev/fuse)
	NBD_CSI_BENCH=1 $(DOTNET) test --project tests/NbdSidecar.Tests -c $(CONFIGURATION) --no-build --filter-trait Category=Benchmark --output Detailed

# The chart's image defaults: ghcr.io/nbdoperator/nbd-{operator,sidecar}:<appVersion of the chart>.
IMAGE_REGISTRY ?= ghcr.io/nbdoperator
IMAGE_TAG ?= $(shell sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$$/\1/p' $(CHART)/Chart.yaml)
DOCKER ?= docker

.PHONY: images
images: ## Build the nbd-operator and nbd-sidecar images with Docker (IMAGE_REGISTRY=..., IMAGE_TAG=...)
	$(DOCKER) build -f operator/Dockerfile -t $(IMAGE_REGISTRY)/nbd-operator:$(IMAGE_TAG) .
	$(DOCKER) build -f sidecar/Dockerfile -t $(IMAGE_REGISTRY)/nbd-sidecar:$(IMAGE_TAG) .
	@echo "images: built $(IMAGE_REGISTRY)/nbd-operator:$(IMAGE_TAG) and $(IMAGE_REGISTRY)/nbd-sidecar:$(IMAGE_TAG);" \
	  "install with: helm install nbd-operator $(CHART) -n nbd-system --create-namespace" \
	  "--set operator.image.repository=$(IMAGE_REGISTRY)/nbd-operator --set sidecar.image.repository=$(IMAGE_REGISTRY)/nbd-sidecar"

.PHONY: clean
clean: ## Remove build output
	rm -rf $(ARTIFACTS)
	find . -type d \( -name bin -o -name obj \) -prune -exec rm -rf {} +
