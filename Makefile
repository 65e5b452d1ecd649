# make test : fresh virtual environment in .venv (if missing), build + install, run the tests
# make demo : the main job (see README)
# make fuzz : the property-based tests with fresh seeds and many cases (FUZZ_SEED=n replays)
# make lint : ruff check and format check, and the layer contract (lint-imports)
# make bench: the microbenchmarks (JSON under bench/results/)
# make figures: rerun the published results, their miniatures, and the README blocks made from them
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.contnet-installed
LINTED := contnet tests setup.py bench/figures.py
SOURCES := setup.py pyproject.toml contnet/ops/activations.def $(wildcard csrc/*.cpp csrc/autograd/*.cpp csrc/cpu/*.cpp csrc/cuda/*.cu csrc/include/contnet/*)

export PATH := $(BIN):$(PATH)
export MAX_JOBS ?= 2

PROPERTIES := tests/test_properties_ops.py tests/test_properties_error.py tests/test_properties_api.py tests/test_properties_checkpoint.py

.PHONY: all test fuzz demo lint format bench figures clean

all: test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python $(SOURCES)
	$(BIN)/python -m pip install -q torch numpy ninja setuptools wheel
	$(BIN)/python -m pip install -q --no-build-isolation -e '.[cli,test,dev]'
	touch $@

test: $(STAMP)
	$(BIN)/python -m pytest

fuzz: $(STAMP)
	seed=$${FUZZ_SEED:-$$($(BIN)/python -c 'import secrets; print(secrets.randbelow(2**32))')}; \
	$(BIN)/python -m pytest -p no:cacheprovider -q $(PROPERTIES) \
		--hypothesis-profile=fuzz --hypothesis-seed=$$seed

demo: $(STAMP)
	$(BIN)/python -m contnet demo

lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff check --fix $(LINTED)
	$(BIN)/ruff format $(LINTED)

bench: $(STAMP)
	$(BIN)/python -m contnet.bench

figures: $(STAMP)
	$(BIN)/python bench/figures.py run
	$(BIN)/python bench/figures.py readme

clean:
	rm -rf build *.egg-info contnet/_C*.so
