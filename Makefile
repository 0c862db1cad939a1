VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint venv clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: the CPU wheel is on this disk; a loose requirement pulls CUDA builds.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,ray]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m demo

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

# Every ratio benchmark with its defaults, one after another (about 2-3 minutes on two
# idle CPU cores; on a GPU machine they pick CUDA). Output: benchmarks/results/<device>-latest/.
BENCHMARKS ?= mixed_adapters peft_baselines hot_swap memory vision_cache training_step \
	decode_cache slot_write onnx_vision huge_text host_memory launches merged_lora
.PHONY: bench
bench: venv
	@device=$$($(PY) -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')"); \
	out=benchmarks/results/$$device-latest; mkdir -p $$out; \
	for name in $(BENCHMARKS); do \
		echo "== $$name ($$device) -> $$out/$$name.txt"; \
		extra=; [ $$name = mixed_adapters ] && extra="--out $$out"; \
		$(PY) -m benchmarks.$$name $$extra > $$out/$$name.txt 2>&1 || { tail -20 $$out/$$name.txt; exit 1; }; \
		grep -iE "ratio|speed-up|p50|mixed/|ours/| / " $$out/$$name.txt | tail -6; \
	done
