# The two commands: `make dev` runs the whole stack, `make test` runs every suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY_STAMP := $(VENV)/.installed
NODE_STAMP := bridge/node_modules/.installed
JS_STAMP := clients/js/node_modules/.installed

.PHONY: dev test lint pytest node-test js-test install clean

dev: install
	$(BIN)/whatsched dev

test: install lint pytest node-test js-test

install: $(PY_STAMP) $(NODE_STAMP) $(JS_STAMP)

$(PY_STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "whatsched needs Python 3.11 or newer (found " + sys.version.split()[0] + ")")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

$(NODE_STAMP): bridge/package.json bridge/package-lock.json
	@command -v node >/dev/null || { echo "whatsched needs Node.js 20 for the WhatsApp bridge; install it first."; exit 1; }
	cd bridge && PUPPETEER_SKIP_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error
	@touch $@

lint: $(PY_STAMP)
	$(BIN)/ruff check backend tests scripts
	$(BIN)/ruff format --check backend tests scripts
	$(BIN)/mypy

pytest: $(PY_STAMP)
	$(BIN)/pytest

node-test: $(NODE_STAMP)
	cd bridge && npm test

$(JS_STAMP): clients/js/package.json clients/js/package-lock.json
	cd clients/js && PUPPETEER_SKIP_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error
	@touch $@

js-test: $(PY_STAMP) $(NODE_STAMP) $(JS_STAMP)
	cd clients/js && npm test

clean:
	rm -rf $(VENV) bridge/node_modules clients/js/node_modules clients/js/dist
