# The verbs a newcomer needs. `make run` and `make test` set up everything they use, idempotently.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat setup.cfg pyproject.toml | sha1sum | cut -c1-12)

.DEFAULT_GOAL := help
.PHONY: help venv tools stack-up stack-down stack-status migrate run test test-unit lint typecheck schema-drift bench bench-quick bench-tables clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

venv: $(STAMP) ## create .venv and install the project with its dev tools

$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

tools: venv ## build the tools the tests need (OPA, schemathesis, helm, kubeconform, schemas), once per machine
	$(PY) -m deploy.localstack tools

stack-up: venv ## start (or reuse) Kafka, Redis and PostgreSQL, installing what is missing
	$(PY) -m deploy.localstack up

stack-down: ## stop what stack-up started (never a reused server)
	@if [ -x $(PY) ]; then $(PY) -m deploy.localstack down; else echo "nothing to stop (no .venv)"; fi

stack-status: venv ## report each component of the stack and the workers `make run` started
	$(PY) -m deploy.localstack status

migrate: stack-up ## apply the database migrations
	$(PY) -m tools.migrate

# SLM=1: the responder on, with llama.cpp's server and a small model on this machine (built by `make tools`,
# ~11 min once): every message gets a streamed reply; and voice messages, with faster-whisper-server and
# Whisper tiny.en (installed by `make tools`, a minute once)
SLM ?= 0
ifeq ($(SLM),1)
export SOMA_SLM_URL ?= http://127.0.0.1:8081
export SOMA_STT_URL ?= http://127.0.0.1:8082
endif

# AUTH=1: authentication on, with a development issuer (POST /dev/token, the console's "Get a dev token")
# signing with a secret kept in .stack/dev-jwt-secret; without it the worker runs open and says so
AUTH ?= 0
DEV_SECRET := .stack/dev-jwt-secret
# REPLICAS=N: N workers of one group on consecutive web ports from SOMA_WEB_PORT, each with its own data dir and
# log under .stack/workers/ (one worker logs to the terminal); `make stack-status` lists them
REPLICAS ?= 1

run: migrate ## run the worker and its web server on SOMA_WEB_PORT (6066); AUTH=1 authentication, REPLICAS=N workers, SLM=1 replies and voice
	@if [ "$(AUTH)" = "1" ]; then \
	  mkdir -p .stack && test -s $(DEV_SECRET) || $(PY) -c 'import secrets; print(secrets.token_urlsafe(48))' > $(DEV_SECRET); \
	  export SOMA_AUTH_REQUIRED=1 SOMA_DEV_TOKENS=1 SOMA_JWT_SECRET="$$(cat $(DEV_SECRET))"; \
	  exec $(PY) -m deploy.localstack run $(REPLICAS); \
	else \
	  exec $(PY) -m deploy.localstack run $(REPLICAS); \
	fi

lint: venv ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv ## mypy --strict on the app code
	$(VENV)/bin/mypy

schema-drift: venv ## compare schemas with the released version
	$(PY) -m tools.schema_drift

# four test processes on two cores: most of the suite's time is spent waiting (outages held 20 s, rebalances,
# clusters electing, a model writing), not computing (332 tests: 6m25s with two, 4m46s with three; 399 tests:
# 6m22s with three, 5m33s with four); a test file runs whole in one process (its module's worker is shared)
TEST_PROCESSES ?= 4

test: lint typecheck schema-drift tools migrate ## quality gates, then the whole suite against the real servers
	$(VENV)/bin/pytest -n $(TEST_PROCESSES) --dist loadfile

test-unit: venv ## the tests that need no server (settings, schemas, sequencing...), in seconds
	$(VENV)/bin/pytest -m "not integration"

bench: migrate ## W1-W3 beside their baselines and Centrifugo, W5 replies; rewrites docs/benchmarks.md and its charts
	$(PY) -m tests.bench

bench-quick: migrate ## the same, smaller (under 3 minutes): run it after every change to the hot path
	$(PY) -m tests.bench --quick

bench-tables: migrate ## the table store's benchmarks (recovery from Redis, updates/s): tests/bench/bench_*.py
	$(VENV)/bin/pytest tests/bench -s -p no:cacheprovider -o python_files='bench_*.py' -o timeout=1800

clean: stack-down ## stop the stack and remove the virtualenv and local data
	rm -rf $(VENV) .stack
