# Stella Release Orchestrator. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
# uv from PATH, else the one pip installs for this Python (`make uv` installs it when missing).
UV ?= $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
PYTEST_ARGS ?=
# The image `make image` builds, and the base it builds on (local stand-ins: `make local-images`).
IMAGE ?= stella:latest
BASE_IMAGE ?= python:3.11-slim-bookworm

.PHONY: help
help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

.PHONY: uv
uv:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv || python3 -m pip install --quiet --break-system-packages uv

.PHONY: setup
setup: uv ## Install the workspace and its development tools into .venv
	@$(UV) sync --all-packages --frozen 2>/dev/null || $(UV) sync --all-packages

.PHONY: run
run: setup ## Start the whole system (embedded NATS and Postgres unless STELLA_DATABASE_URL / STELLA_NATS_URL are set)
	@$(UV) run --no-sync python deploy/local/stack.py

.PHONY: test-deps
test-deps: ## Install and start what the tests need besides Python (registry, busybox, Docker engine, Compose)
	@bash .ci/test-deps

.PHONY: test
test: setup test-deps ## Run every test against real Postgres, NATS and Docker (the configured ones, else containers, else embedded)
	@export TESTCONTAINERS_RYUK_DISABLED="$${TESTCONTAINERS_RYUK_DISABLED:-true}" \
		TESTCONTAINERS_CONNECTION_MODE="$${TESTCONTAINERS_CONNECTION_MODE:-docker_host}"; \
	$(UV) run --no-sync pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing on purpose" >&2; exit 1; fi; exit $$rc

.PHONY: lint
lint: setup ## Lint, check formatting, type-check (mypy) and check the import layers (import-linter)
	@$(UV) run --no-sync ruff check .
	@$(UV) run --no-sync ruff format --check .
	@$(UV) run --no-sync mypy
	@$(UV) run --no-sync lint-imports
	@$(UV) run --no-sync python -m stella.contracts.public.asyncapi --check docs/asyncapi.json

.PHONY: asyncapi
asyncapi: setup ## Regenerate docs/asyncapi.json (the public events' AsyncAPI document) from the contracts
	@$(UV) run --no-sync python -m stella.contracts.public.asyncapi --write docs/asyncapi.json

.PHONY: fmt
fmt: setup ## Format and fix what can be fixed automatically
	@$(UV) run --no-sync ruff format .
	@$(UV) run --no-sync ruff check --fix .

.PHONY: bench
bench: setup ## Run the benchmarks (each prints ratios against a baseline measured in the same run; fails when one misses its goal)
	@rc=0; for b in $(wildcard tests/bench/*.py services/*/bench/*.py); do echo "== $$b"; $(UV) run --no-sync python "$$b" || rc=1; done; exit $$rc

.PHONY: wheelhouse
wheelhouse: setup ## Prepare deploy/.wheels from uv.lock (third-party wheels are fetched again only when the lock changes)
	@UV="$(UV)" ./deploy/wheelhouse.sh

.PHONY: image
image: wheelhouse ## Build the image of every service (IMAGE=stella:latest, BASE_IMAGE=python:3.11-slim-bookworm)
	@docker build --file deploy/Dockerfile --build-arg BASE_IMAGE=$(BASE_IMAGE) --tag $(IMAGE) .
	@echo "built $(IMAGE)"

.PHONY: local-images
local-images: ## Build stand-ins for the public base, Postgres, NATS, PgBouncer and HAProxy images from Debian packages (needs root)
	@./deploy/images/local-base.sh > deploy/images/local.env
	@echo "written deploy/images/local.env (use: docker compose --env-file .env ... or append it to .env)"

.PHONY: clean
clean: ## Remove local state (.stella: embedded databases, keys, admin token)
	rm -rf .stella
