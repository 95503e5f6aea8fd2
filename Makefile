# Set-up: `make serve` runs the service on the shipped checkpoints; `make test` runs every test.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve test lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

serve: install
	$(BIN)/dgr2 serve

lint: install
	$(BIN)/ruff check .

test: install lint
	@command -v prometheus >/dev/null || bash scripts/install_prometheus.sh || \
		echo "prometheus could not be installed: the Prometheus scrape test will skip"
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis *.egg-info
