# The two commands of the README: `make demo` (the main job on the built-in demo cohort) and `make test`.
# Both create the virtual environment on first use; nothing else needs to be installed by hand.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= demo_out
SUBJECTS ?= 120
TASK ?= mortality

.PHONY: install demo test lint bench clean-demo

# astra: the real CT backbone for its test. uni2ts (MOIRAI's reference code, used by the parity test only) pins
# torch<2.5 and numpy 1.26, so it goes in without its dependencies (dev lists the few it imports).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,astra]'
	$(BIN)/pip install -q --no-deps 'uni2ts==2.0.0'
	touch $@

install: $(VENV)/.installed

demo: install
	HF_HUB_OFFLINE=1 bash pipelines/demo_job.sh $(BIN) $(DEMO) $(SUBJECTS) $(TASK)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q

bench: install
	$(BIN)/python benchmarks/cache_read.py
	$(BIN)/python benchmarks/extract_overhead.py
	$(BIN)/python benchmarks/train_epoch.py --quick
	$(BIN)/python benchmarks/wsi_patching.py     # CLAM's side only with --clam/--clam-python or CLAM_DIR/CLAM_PYTHON
	$(BIN)/python benchmarks/wsi_features.py

clean-demo:
	rm -rf $(DEMO)
