# Set-up: `make serve` runs the service on the shipped checkpoints; `make test` runs every test.
# Both install from the locked set in requirements/ (hashes checked); `make lock` regenerates it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# TORCH=cpu installs the locked CPU wheel; TORCH=preinstalled keeps a torch==2.13.0 already in the venv
# (a CUDA build, installed first as the README says)
TORCH ?= cpu
PIP := $(BIN)/pip install -q --require-hashes --no-deps

.PHONY: install install-runtime serve test lint lock lock-upgrade clean

install: $(VENV)/.test-installed
install-runtime: $(VENV)/.runtime-installed

$(VENV)/.created:
	$(PY) -m venv $(VENV)
	touch $@

$(VENV)/.torch-installed: $(VENV)/.created requirements/torch-cpu.lock
	@if [ "$(TORCH)" = cpu ]; then $(PIP) -r requirements/torch-cpu.lock; else \
		$(BIN)/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" || \
		{ echo "TORCH=$(TORCH): install torch==2.13.0 into $(VENV) first" >&2; exit 1; }; fi
	touch $@

# --no-deps everywhere: the lock is the whole set, and `pip check` proves it consistent
$(VENV)/.runtime-installed: $(VENV)/.torch-installed requirements/runtime.lock pyproject.toml
	$(PIP) -r requirements/runtime.lock
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $@

$(VENV)/.test-installed: $(VENV)/.runtime-installed requirements/test.lock
	$(PIP) -r requirements/test.lock
	$(BIN)/pip check
	touch $@

serve: install-runtime
	$(BIN)/dgr2 serve

lint: install
	$(BIN)/ruff check .

# Under CI a missing Prometheus or Chromium fails the run; elsewhere their tests skip naming the install command
test: install lint
	@command -v prometheus >/dev/null || bash scripts/install_prometheus.sh || [ -z "$$CI" ]
	@{ command -v chromium && command -v chromedriver; } >/dev/null || bash scripts/install_chromium.sh || [ -z "$$CI" ]
	$(BIN)/python -m pytest

lock:
	bash scripts/lock.sh

lock-upgrade:
	bash scripts/lock.sh --upgrade
	$(MAKE) test

clean:
	rm -rf $(VENV) .venv-lock .pytest_cache .ruff_cache .hypothesis *.egg-info
