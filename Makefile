# Plant: `make dev` runs the whole stack locally, `make test` runs the suite.
# Both need only Python >= 3.11 and make: they create .venv and install the project.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev demo test lint scan bench install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

dev: $(STAMP)
	$(BIN)/plant dev

# The guided demo on a stack of its own (.plant-demo, ports 8100/5655): certify, assign,
# audit, tamper through SQL, audit again, export and verify the signed report, restore the row.
DEMO_PAUSE ?= 4
demo: $(STAMP)
	$(BIN)/plant demo --pause $(DEMO_PAUSE)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# The suite runs in TEST_WORKERS processes (pytest-xdist), each with its own embedded
# PostgreSQL and Redis; auto is one more than the CPU cores, or 0 (in this process) when
# TEST_DATABASE_URL or TEST_REDIS_URL names a shared server (tests/conftest.py). A worker that
# runs out of tests takes some of another's (worksteal), so a slow end-to-end test queued last
# does not leave the other workers idle.
TEST_WORKERS ?= auto
# The suite writes bytecode whatever PYTHONDONTWRITEBYTECODE says (set on some machines and CI
# images): each of the ~150 APIs, workers, beats and CLIs it starts otherwise compiles Plant's
# modules again (0.25 s of CPU apiece), and each test worker re-rewrites every test module's
# asserts. On a CPU-bound run that was 9 % of the CPU of tests/test_chaos.py, test_cli.py and
# test_audit.py together (132 s against 120 s). __pycache__ is ignored by git.

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

# Benchmarks on an embedded stack (bench/README.md): JSON in bench/results/, tables in
# docs/benchmarks.md. SCENARIOS=pipeline,api runs a subset. wrk (Debian package) is the
# load generator when installed.
bench: $(STAMP)
	$(BIN)/python -m bench.run $(if $(SCENARIOS),--scenarios $(SCENARIOS))

bench-quick: $(STAMP)
	$(BIN)/python -m bench.run --quick $(if $(SCENARIOS),--scenarios $(SCENARIOS))

# Static security scan of terraform/ and the Dockerfile (checkov, in its own virtualenv).
scan:
	bash terraform/tools/checkov.sh

clean:
	rm -rf $(VENV) .pytest_cache
