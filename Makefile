# `make demo` and `make test` work on a fresh Debian machine with Python 3.11:
# they create .venv, install shardsync into it, and (for tests) the system
# packages the end-to-end tests need (nginx, chromium, TF.js from npm).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: demo test lint bench deps clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/shardsync demo

deps:
	bash tests/setup-deps.sh

lint: $(VENV)/.installed
	$(PY) -m ruff check .

test: $(VENV)/.installed deps lint
	$(PY) -m pytest -q

# Each benchmark prints its figures next to a reference run in the same process.
bench: $(VENV)/.installed deps
	$(PY) bench/store_put.py
	$(PY) bench/sync_bench.py --repeat 3
	$(PY) bench/service_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
