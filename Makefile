# brainkit: two commands do all the set-up.
#   make book   create .venv if absent, install brainkit + pinned deps, build the book (ci profile)
#   make test   same set-up, run the test suite
# GPU users: install a CUDA build of torch into .venv first (see README); it is kept.

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
# e.g. TORCH_INDEX=https://download.pytorch.org/whl/cu124 for a CUDA build
TORCH_INDEX ?=
BRAINKIT_PROFILE ?= ci
PYTEST_ARGS ?=
export BRAINKIT_PROFILE

STAMP := $(VENV)/.brainkit-installed

.PHONY: setup book test lock clean-book

$(STAMP): pyproject.toml requirements/lock.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c 'import sys; assert sys.version_info[:2] >= (3, 11), "brainkit needs Python >= 3.11, got " + sys.version' 
	$(BIN)/python -m pip install --quiet --upgrade pip
	@if $(BIN)/python -c 'import torch' 2>/dev/null; then \
		echo "torch already installed: $$($(BIN)/python -c 'import torch; print(torch.__version__)')"; \
	else \
		$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)); \
	fi
	$(BIN)/python -m pip install --quiet -c requirements/lock.txt -e ".[book,dev]"
	@touch $@

setup: $(STAMP)

book: $(STAMP)
	@$(BIN)/python -m brainkit.bookbuild book

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lock: $(STAMP)
	@{ head -n 3 requirements/lock.txt; $(BIN)/python -m pip freeze --exclude-editable | grep -viE '^(torch|nvidia-|triton|brainkit)'; } > requirements/lock.txt.new
	@mv requirements/lock.txt.new requirements/lock.txt

clean-book:
	rm -rf book/_build
