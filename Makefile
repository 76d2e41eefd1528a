# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# The servers' URLs (COHORTS_DATABASE_URL, COHORTS_REDIS_URL, COHORTS_BROKER_URL and the tests' COHORTS_TEST_*):
# yours where you set them, else those of the servers scripts/ensure-services.sh found or started
# (postgresql://postgres@127.0.0.1:5432/cohorts, redis://127.0.0.1:6379/0 and /1 by default), which it writes to
# var/services.env; every recipe that talks to them reads that file first (docs/setup.md).
SERVICES_ENV = . "$(or $(COHORTS_VAR_DIR),$(CURDIR)/var)/services.env" &&
export COHORTS_STORE_DIR ?= $(CURDIR)/var/store
export COHORTS_DEFAULT_TOKEN ?= dev-token
export FLOWER_BASIC_AUTH ?= admin:admin
# The demo project's Sugo targets (docs/dialects/sugo.md): db 2 of the service's Redis (db 0 holds the
# service's bitmaps, db 1 its job broker: never Sugo targets) and the bundled hproxy stand-in.
SUGO_DEMO_REDIS ?= $${COHORTS_SERVICES_REDIS}/2
SUGO_DEMO_HPROXY ?= 127.0.0.1:8085
SAMPLE_USERS ?= 20000
SAMPLE_EVENTS ?= 400000

.PHONY: run test bench lint services stop-services migrate sample demo token sugo-demo clean

$(BIN)/.installed: setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required (apt-get install python3)"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,services]' || { echo "make: no server wheels for this platform (docs/setup.md); installing without them"; $(BIN)/pip install -q -e '.[dev]'; }
	touch $@

services: $(BIN)/.installed
	@COHORTS_PYTHON=$(BIN)/python bash scripts/ensure-services.sh

# Stops the private servers that ensure-services.sh started under var/ (never the machine's own).
stop-services:
	@COHORTS_PYTHON=$(BIN)/python bash scripts/ensure-services.sh --stop

migrate: $(BIN)/.installed services
	$(SERVICES_ENV) $(BIN)/cohorts migrate

sample: migrate
	$(SERVICES_ENV) $(BIN)/cohorts sample --users $(SAMPLE_USERS) --events $(SAMPLE_EVENTS) --seed 7 --out var/sample --if-store-empty --ingest

demo: sample
	$(SERVICES_ENV) $(BIN)/cohorts demo

token: migrate
	$(SERVICES_ENV) $(BIN)/python -m core.manage set-token default $(COHORTS_DEFAULT_TOKEN)

sugo-demo: migrate
	$(SERVICES_ENV) $(BIN)/python -m core.manage sugo-allow default --redis $(SUGO_DEMO_REDIS) --hproxy $(SUGO_DEMO_HPROXY)

run: sample token sugo-demo
	$(SERVICES_ENV) bash scripts/run.sh

test: $(BIN)/.installed services
	@bash scripts/ensure-browser.sh
	$(SERVICES_ENV) $(BIN)/python -m pytest -q

bench: migrate
	$(SERVICES_ENV) $(BIN)/python -m benchmarks.run

lint: $(BIN)/.installed
	$(BIN)/ruff check .

clean:
	-@bash scripts/ensure-services.sh --stop
	rm -rf var
