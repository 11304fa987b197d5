# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv when needed.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := demo

.PHONY: venv demo test lint typecheck unit bench clean

$(STAMP): pyproject.toml constraints.txt tools/install_privacy_tests.py
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	$(BIN)/python tools/install_privacy_tests.py
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/covidct synth --config configs/demo.yaml --out $(DEMO)/cohort
	$(BIN)/covidct prepare --config configs/demo.yaml $(DEMO)/cohort \
		--labels $(DEMO)/cohort/labels.csv --out $(DEMO)/prep
	$(BIN)/covidct train --config configs/demo.yaml --data $(DEMO)/prep --epsilon 3 \
		--runs $(DEMO)/runs
	$(BIN)/covidct sweep --config configs/demo.yaml --data $(DEMO)/prep --epsilons 1,3,8,inf \
		--out $(DEMO)/runs/sweep --no-progress
	@echo
	@echo "Prepared data: $(DEMO)/prep (manifest.csv, prep_report.json; features/ is the cache)."
	@echo "Runs: $(DEMO)/runs/<run_id>/ (privacy_report.md, metrics.json, model.keras); the"
	@echo "lines above name the epsilon-3 run's folder. The sweep (epsilon 1, 3, 8 and the"
	@echo "non-private baseline, on the same cached features): $(DEMO)/runs/sweep/sweep_report.md"
	@echo "Dashboard: $(BIN)/covidct dashboard --runs $(DEMO)/runs"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# The browser test drives Debian's chromium (Playwright's own browser download is unreachable).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	@command -v apt-get >/dev/null || { echo "install chromium (needed by the browser test)"; exit 1; }
	$(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(if $(filter 0,$(shell id -u)),,sudo) \
		apt-get install -y -qq chromium >/dev/null

unit: $(STAMP) $(CHROMIUM)
	$(BIN)/python -m pytest

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_prepare.py

clean:
	rm -rf $(DEMO) .pytest_cache .mypy_cache .ruff_cache
