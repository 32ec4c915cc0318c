# `make demo` and `make test` work on a fresh Debian machine with Python 3.11:
# they create .venv, install shardsync into it, and (for tests) the system
# packages the end-to-end tests need (nginx, chromium, TF.js from npm).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: demo test lint typecheck bench deps clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/shardsync demo

deps:
	bash tests/setup-deps.sh

lint: $(VENV)/.installed typecheck
	$(PY) -m ruff check .

# mypy cannot follow setuptools' package-dir mapping (daemon/ -> shardsync.daemon), so it
# checks a tree of two symlinks that names the packages as they install.
typecheck: $(VENV)/.installed
	mkdir -p .typecheck/shardsync
	ln -sfn ../../daemon .typecheck/shardsync/daemon
	ln -sfn ../../store .typecheck/shardsync/store
	cd .typecheck && ../$(PY) -m mypy --config-file ../pyproject.toml -p shardsync

test: $(VENV)/.installed deps lint
	bash tests/run-suite.sh $(PY)

# Each benchmark prints its figures next to a reference run in the same process.
bench: $(VENV)/.installed deps
	$(PY) bench/store_put.py
	$(PY) bench/sync_bench.py --repeat 3
	$(PY) bench/service_bench.py
	$(PY) bench/startup_bench.py
	$(PY) bench/tls_bench.py
	$(PY) bench/import_bench.py
	$(PY) bench/rate_bench.py
	$(PY) bench/fleet_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .typecheck
