VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint venv clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: the CPU wheel is on this disk; a loose requirement pulls CUDA builds.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m training.demo

test: venv
	$(PY) -m ruff check .
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache

# Locust against a local server with many adapters; report in benchmarks/results/loadtest.md.
# Override e.g. LOADTEST_ARGS="--adapters 64 --users 1,8,32 --duration 30".
LOADTEST_ARGS ?=
.PHONY: loadtest
loadtest: venv
	$(PY) -m benchmarks.loadtest $(LOADTEST_ARGS)
