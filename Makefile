# Two commands for a fresh machine: `make repro` (install + run the pipeline
# on the bundled sample, offline) and `make test`.
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
PYTHON ?= python3
export PATH := $(BIN):$(PATH)
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: install repro test clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

repro: install
	dvc repro

test: install
	$(BIN)/pytest

clean:
	rm -rf $(VENV)
