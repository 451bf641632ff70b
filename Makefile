# Two commands do everything on a fresh machine (Python 3.11 with venv and a C++17 compiler):
#   make demo   virtual environment, pinned dependencies, build, the main example
#   make test   virtual environment, pinned dependencies, build, the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.deps-installed
SOURCES = $(wildcard src/hmm/*.h src/hmm/*.cc src/hmm/*.cu src/mxnet/*.cc) gluon_hmm/_native.pyx setup.py
BUILT   = gluon_hmm/libgluon_hmm_mxnet.so
# The package is built in place, not installed: scripts run from the checkout find it here.
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))

.PHONY: all venv build test test-quick demo bench clean

all: build

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.txt requirements-dev.txt examples/requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install -q -r requirements.txt -r requirements-dev.txt -r examples/requirements.txt
	touch $@

venv: $(STAMP)

$(BUILT): $(STAMP) $(SOURCES)
	$(BIN)/python setup.py -q build_ext --inplace

build: $(BUILT)

test: build
	$(BIN)/python -m pytest -q tests

demo: build
	$(BIN)/python examples/gist_hmm.py

bench: build
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf build gluon_hmm/*.so gluon_hmm/_native.cpp
