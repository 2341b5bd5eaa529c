# Quick start: `make demo` and `make test`. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint typecheck check bench clean venv windows-dist windows-prefix test-windows bench-windows

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vitals-agent demo

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --platform win32 --cache-dir .mypy_cache/win32 --follow-imports silent -p vitals_agent.host
	$(VENV)/bin/mypy --strict tests bench

# The suite runs in parallel (pytest-xdist) on one worker more than there are cores: the end-to-end tests
# spend much of their time waiting on processes and sockets (2 cores: 3 workers ~105 s, 2 workers ~120 s).
# TEST_WORKERS=0 runs it in this process. Tests are handed out one at a time, the long ones first
# (tests/conftest.py, "pytest-xdist").
TEST_WORKERS ?= $(shell echo $$(( $$(nproc 2>/dev/null || echo 1) + 1 )))
PYTEST_PARALLEL := -n $(TEST_WORKERS)
# pytest and every agent, CLI and worker it starts keep their bytecode in __pycache__ (git-ignored) even
# where PYTHONDONTWRITEBYTECODE is set: without it each of ~150 interpreters compiles the agent from source
# and each xdist worker rewrites every test module again (~30 s of CPU per run).
PYTEST := PYTHONDONTWRITEBYTECODE= $(VENV)/bin/pytest

test: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --platform win32 --cache-dir .mypy_cache/win32 --follow-imports silent -p vitals_agent.host
	$(VENV)/bin/mypy --strict tests bench
	$(VENV)/bin/lint-imports --no-cache
	$(PYTEST) -q $(PYTEST_PARALLEL)

# The suite without the tests that start the agent, a worker or a browser (marked `slow`).
test-fast: $(STAMP)
	$(PYTEST) -q $(PYTEST_PARALLEL) -m "not slow"

check: lint typecheck test

bench: $(STAMP)
	$(PY) bench/run_all.py

# Windows: the zip (embeddable CPython + agent + Windows wheels, from PyPI; downloads cached in .windows/cache)
windows-dist:
	$(PYTHON) packaging/windows/build.py

# The Windows lane under Wine: tools, zip, a fresh prefix installed with the zip's own install.cmd, then
# the unit tests under the Windows CPython, the end-to-end run and the service (tests/windows/).
windows-prefix: $(STAMP)
	packaging/windows/ensure-tools.sh
	$(PYTHON) packaging/windows/build.py --test-site .windows/build/testsite
	$(PY) tests/windows/winelane.py setup

# WINDOWS_LANE selects the lane's tests by pytest -k (default: all: the unit tests under the Windows
# CPython, the end-to-end run, the service).
WINDOWS_LANE ?=
test-windows: windows-prefix
	@start=$$(date +%s); VITALS_WINDOWS_LANE=1 $(VENV)/bin/pytest -q -rP -p no:cacheprovider tests/windows \
	  $(if $(WINDOWS_LANE),-k "$(WINDOWS_LANE)"); rc=$$?; $(PY) tests/windows/winelane.py teardown; \
	  echo "windows lane: $$(( $$(date +%s) - start )) s of tests (exit $$rc)"; exit $$rc

# Idle CPU of the agent under Wine with four silent COM ports, beside a bare python.exe under the same Wine
# and the same agent on Linux (bench/bench_windows_idle.py; BENCH_SECONDS is the sampling window).
BENCH_SECONDS ?= 60
bench-windows: windows-prefix
	$(PY) bench/bench_windows_idle.py --seconds $(BENCH_SECONDS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache test-artifacts .windows/build .windows/prefix dist
