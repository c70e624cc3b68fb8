# Two entry points for a newcomer: `make demo` and `make test`. Both set up .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo
DEMO_N ?= 2000

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml
	bash scripts/system_deps.sh
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/vlmforge sample-data $(DEMO_DIR)/raw --n $(DEMO_N) --seed 0
	$(BIN)/vlmforge curate configs/curate/default.yaml --input $(DEMO_DIR)/raw --output $(DEMO_DIR)/curated
	$(BIN)/vlmforge stats $(DEMO_DIR)/curated --html $(DEMO_DIR)/report.html
	@echo "report: $(DEMO_DIR)/report.html"

test: setup
	$(BIN)/ruff check pipeline training tests benchmarks
	$(BIN)/python -m pytest -q tests

lint: setup
	$(BIN)/ruff check pipeline training tests benchmarks

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
