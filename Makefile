# NbdOperator — build, run and test everything from here. `make help` lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CONFIGURATION ?= Release
DOTNET ?= dotnet
ARTIFACTS := $(CURDIR)/artifacts
# While some test projects are still empty, "zero tests ran" (exit code 8) is not a failure.
TEST_ARGS ?= --ignore-exit-code 8
SIDECAR := $(ARTIFACTS)/sidecar/nbd-sidecar
OPERATOR := $(ARTIFACTS)/operator/nbd-operator
export DOTNET_CLI_TELEMETRY_OPTOUT := 1
export DOTNET_NOLOGO := 1
export DOTNET_SKIP_FIRST_TIME_EXPERIENCE := 1

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build everything; leaves artifacts/sidecar/nbd-sidecar and artifacts/operator/nbd-operator
	$(DOTNET) build NbdOperator.sln -c $(CONFIGURATION) -nologo -clp:NoSummary -v:q
	$(DOTNET) publish sidecar/src/NbdSidecar -c $(CONFIGURATION) --use-current-runtime --self-contained false -nologo -v:q -o $(ARTIFACTS)/sidecar
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

.PHONY: test
test: deps build lint ## Install test dependencies, build, and run every test
	$(DOTNET) test --solution NbdOperator.sln -c $(CONFIGURATION) --no-build --results-directory $(ARTIFACTS)/test-results $(TEST_ARGS)

.PHONY: bench-copy
bench-copy: build ## Benchmark nbd-sidecar copy against nbdcopy and qemu-img convert (BENCH_ARGS=--quick for a smoke run)
	tests/bench/copy-bench.sh --sidecar $(SIDECAR) $(BENCH_ARGS)

.PHONY: clean
clean: ## Remove build output
	rm -rf $(ARTIFACTS)
	find . -type d \( -name bin -o -name obj \) -prune -exec rm -rf {} +
