# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export COHORTS_DATABASE_URL ?= postgresql://postgres@127.0.0.1:5432/cohorts
export COHORTS_REDIS_URL ?= redis://127.0.0.1:6379/0
export COHORTS_STORE_DIR ?= $(CURDIR)/var/store
export COHORTS_BROKER_URL ?= redis://127.0.0.1:6379/1
export COHORTS_DEFAULT_TOKEN ?= dev-token
export FLOWER_BASIC_AUTH ?= admin:admin
# The demo project's Sugo targets (docs/dialects/sugo.md): db 2 of the local Redis (db 0 holds the
# service's bitmaps, db 1 its job broker: never Sugo targets) and the bundled hproxy stand-in.
SUGO_DEMO_REDIS ?= 127.0.0.1:6379/2
SUGO_DEMO_HPROXY ?= 127.0.0.1:8085
SAMPLE_USERS ?= 20000
SAMPLE_EVENTS ?= 400000

.PHONY: run test bench lint services migrate sample demo token sugo-demo clean

$(BIN)/.installed: setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required (apt-get install python3)"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

services:
	@bash scripts/ensure-services.sh

migrate: $(BIN)/.installed services
	$(BIN)/cohorts migrate

sample: migrate
	$(BIN)/cohorts sample --users $(SAMPLE_USERS) --events $(SAMPLE_EVENTS) --seed 7 --out var/sample --if-store-empty --ingest

demo: sample
	$(BIN)/cohorts demo

token: migrate
	$(BIN)/python -m core.manage set-token default $(COHORTS_DEFAULT_TOKEN)

sugo-demo: migrate
	$(BIN)/python -m core.manage sugo-allow default --redis $(SUGO_DEMO_REDIS) --hproxy $(SUGO_DEMO_HPROXY)

run: sample token sugo-demo
	bash scripts/run.sh

test: $(BIN)/.installed services
	$(BIN)/python -m pytest -q

bench: migrate
	$(BIN)/python -m benchmarks.run

lint: $(BIN)/.installed
	$(BIN)/ruff check .

clean:
	rm -rf var
