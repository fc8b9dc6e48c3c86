# kernel-runner: `make run` starts the runner for python on its default ports (2000/2001), on 127.0.0.1, with its
# folders under .run/; `make test` runs the whole suite. Both set up what they need first: `run` a local venv with the
# runtime dependencies only (the `kernel-runner` command is .venv/bin/kernel-runner), `test` the test extras and the
# Debian packages the tests use as well.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LANG_TO_RUN ?= python
# `make run` serves unauthenticated code execution: only this machine may reach it unless BIND says otherwise
# (`make run BIND='*'`, every interface, as in a container). RUN_ARGS: more runner flags (`RUN_ARGS=--debug`).
BIND ?= 127.0.0.1
RUN_ARGS ?=
# RUNTIME_PATH: the language's runtime, when its default (docs/protocol.md §8.1) is not where this machine has it.
RUNTIME_PATH ?=
# Only vendor.aws_polly needs an extra (boto3) to run.
RUN_EXTRAS := $(if $(filter vendor.aws_polly,$(LANG_TO_RUN)),[aws])
RUN_STAMP := $(VENV)/.installed-run$(if $(RUN_EXTRAS),-aws)
# `make run` keeps to its own folders under .run/, wherever it runs: its config folder has no intrinsic-ports.json, so
# it binds the agent's default ports 2000/2001 (docs/protocol.md §1.2) and not whatever a machine's /home/config names,
# and its control socket is the one `kernel-runner ctl --socket .run/control.sock` talks to. To serve a container's
# own folders: `make run WORK_DIR=/home/work CONFIG_DIR=/home/config` (their intrinsic-ports.json then picks the ports).
WORK_DIR ?= $(CURDIR)/.run/work
CONFIG_DIR ?= $(CURDIR)/.run/config
# Relative: a unix socket's path may have at most 107 bytes, and a checkout's folder can be deep.
CONTROL_SOCKET ?= .run/control.sock
PYTEST_ARGS ?=
# Make's own variables must not leak into the runner's children (a user's `make` would print "Entering directory").
CLEAN_ENV := env -u MAKELEVEL -u MAKEFLAGS -u MFLAGS

.PHONY: setup system-deps run test lint typecheck unit test-heavy chaos bench clean

setup: $(STAMP)

$(STAMP): setup.cfg setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,aws]'
	touch $(STAMP)

# The runtime dependencies only, for `make run` (the test extras are `setup`'s).
$(RUN_STAMP): setup.cfg setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.$(RUN_EXTRAS)'
	touch $(RUN_STAMP)

# Installs the Debian packages listed in .ci/apt-packages.txt that are missing (needs root; skipped otherwise).
system-deps:
	@bash .ci/install-system-deps .ci/apt-packages.txt

run: $(RUN_STAMP)
	@mkdir -p $(WORK_DIR) $(CONFIG_DIR)
	$(CLEAN_ENV) $(PY) -m kernel_runner $(LANG_TO_RUN) $(RUNTIME_PATH) --work-dir $(WORK_DIR) --config-dir $(CONFIG_DIR) \
		--control-socket $(CONTROL_SOCKET) --bind '$(BIND)' $(RUN_ARGS)

lint: setup
	$(VENV)/bin/ruff check kernel_runner ai tests bench

typecheck: setup
	$(VENV)/bin/mypy --config-file setup.cfg

test: setup system-deps lint typecheck
	$(CLEAN_ENV) $(PY) -m pytest $(PYTEST_ARGS)

test-heavy: setup
	@bash .ci/install-system-deps .ci/apt-packages-heavy.txt
	$(CLEAN_ENV) $(PY) -m pytest -m heavy $(PYTEST_ARGS)

# The long versions of the reliability suites (tests/fuzz, tests/chaos, tests/load: >= 10 000 fuzz examples,
# repeated faults, bigger floods); ends with the table of tried / survived / lost per probe (tests/support/probes.py).
chaos: setup system-deps
	$(CLEAN_ENV) $(PY) -m pytest -m reliability --chaos tests/fuzz tests/chaos tests/load $(PYTEST_ARGS)

bench: setup system-deps
	@for script in bench/bench_*.py; do echo "== $$script"; $(CLEAN_ENV) $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) .run .mypy_cache .ruff_cache .pytest_cache
