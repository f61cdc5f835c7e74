# afield: the two commands of the README, plus the developer's shortcuts.
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: bootstrap demo test test-fast lint bench clean

bootstrap:
	@sh scripts/bootstrap.sh

demo: bootstrap
	$(PY) -m afield.cli demo

lint: bootstrap
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy benchmarks
	$(VENV)/bin/lint-imports

test: lint
	$(PY) -m pytest

test-fast: lint
	$(PY) -m pytest -m "not slow"

bench: bootstrap
	$(PY) benchmarks/run.py
	$(PY) benchmarks/device.py
	$(PY) benchmarks/wire.py
	$(PY) benchmarks/fdo.py
	$(PY) benchmarks/fleet.py
	$(PY) benchmarks/fleet_scale.py
	$(PY) benchmarks/workloads.py
	$(PY) benchmarks/dashboard.py
	$(PY) benchmarks/boot.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache _demo
