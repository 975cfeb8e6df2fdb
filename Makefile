# homerec: `make demo` and `make test` are the whole set-up on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install demo test lint redis-server chromium clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(INSTALLED)

install: $(INSTALLED)  ## create .venv and install homerec with its test tools

demo: install  ## the main job end to end on the embedded stores (parquet + SQLite)
	$(BIN)/homerec demo

# Debian packages the tests need: installed with apt-get when missing (as root).
define apt_install
	@command -v $(1) >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian package $(2)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2) >/dev/null; \
	  else \
	    echo "$(1) is missing: run 'sudo apt-get install $(2)'" >&2; exit 1; \
	  fi; }
endef

redis-server:  ## make sure a real redis-server is installed (Debian package, as root)
	$(call apt_install,redis-server,redis-server)

chromium:  ## make sure headless Chromium is installed (the dashboard's browser test)
	$(call apt_install,chromium,chromium)

test: install redis-server chromium  ## the whole suite, Redis and browser tests included
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install  ## ruff, the import-layer contracts (import-linter) and mypy on the package
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy

clean:  ## remove generated data (keeps .venv)
	rm -rf data
