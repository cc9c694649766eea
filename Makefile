# Plant: `make dev` runs the whole stack locally, `make test` runs the suite.
# Both need only Python >= 3.11 and make: they create .venv and install the project.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test lint scan bench install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

dev: $(STAMP)
	$(BIN)/plant dev

lint: $(STAMP)
	$(BIN)/lint-imports

test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Static security scan of terraform/ and the Dockerfile (checkov, in its own virtualenv).
scan:
	bash terraform/tools/checkov.sh

clean:
	rm -rf $(VENV) .pytest_cache
