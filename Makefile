# Two entry points for a newcomer: `make demo` and `make test`. Both set up .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo
DEMO_N ?= 2000

.PHONY: setup demo demo-train test test-fast lint bench clean

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

# The whole training recipe on the demo output, on the CPU (run `make demo` first). RESULTS.md's figures are
# from 20,000 sample pairs: `make demo demo-train DEMO_N=20000` (about 20 minutes on 2 quiet cores).
# After the clip run, curation runs again with alignment on: it reuses phase 1 and fills clip_score, the
# score stage 2 picks its subset by.
demo-train: setup
	$(BIN)/vlmforge train-tokenizer $(DEMO_DIR)/curated --output $(DEMO_DIR)/tokenizer.json
	$(BIN)/vlmforge train configs/train/text_lm.yaml
	$(BIN)/vlmforge train configs/train/clip.yaml
	$(BIN)/vlmforge curate configs/curate/default.yaml --input $(DEMO_DIR)/raw --output $(DEMO_DIR)/curated \
		--set alignment.enabled=true --set alignment.checkpoint=$(DEMO_DIR)/runs/clip
	$(BIN)/vlmforge train configs/train/stage1.yaml
	$(BIN)/vlmforge train configs/train/stage2.yaml
	$(BIN)/vlmforge eval configs/train/stage2.yaml --weights $(DEMO_DIR)/runs/stage2/model.safetensors

test: setup
	$(BIN)/ruff check pipeline training common tests benchmarks
	$(BIN)/python -m pytest -q tests

# The fast tier: everything but whole-run, training and cluster tests (about 2-3 minutes on 2 cores).
test-fast: setup
	$(BIN)/ruff check pipeline training common tests benchmarks
	$(BIN)/python -m pytest -q -m "not slow" tests

lint: setup
	$(BIN)/ruff check pipeline training common tests benchmarks

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
