# Every target sets up what it needs: a fresh clone runs `make test` or `make app` and nothing else.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.capnet-installed

CHROMIUM := /usr/bin/chromium

.PHONY: help install test lint app bench mutate soak pretrain ablation reproduce clean

help:
	@echo "make targets (each sets up .venv first when needed):"
	@echo "  install   create .venv and install capnet with its dev extras"
	@echo "  test      lint, then the whole test suite (browser tests need chromium)"
	@echo "  lint      ruff check and format check"
	@echo "  app       start the Gradio app on http://localhost:7860"
	@echo "  bench     benchmarks against bare open_clip (BENCH_ARGS passes options)"
	@echo "  mutate    mutation testing of the core modules (slow; MUTATE_ARGS passes options)"
	@echo "  soak      the app under load on localhost: peak and idle memory (SOAK_ARGS passes options)"
	@echo "  pretrain  retrain the tiny CLIP into runs/pretrain/ (PRETRAIN_OUT=checkpoints/capnet-synth.safetensors"
	@echo "            replaces the shipped file that the tests guard)"
	@echo "  ablation  the Synth-LT ablation on two worlds into runs/ablation, then its reports and"
	@echo "            checkpoint into assets/reports/ and checkpoints/capnet-synth-lt.safetensors"
	@echo "  reproduce fetch DATASET=voc-lt|coco-lt, train with the paper's protocol, evaluate, serve"
	@echo "            (REPRODUCE_ARGS passes options, e.g. --yes)"
	@echo "  clean     remove .venv and caches"

$(STAMP): pyproject.toml requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Debian's chromium for the browser tests (Playwright cannot download its own browser here).
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "chromium is missing and this is not root: the browser tests will skip"; fi

lint: $(STAMP)
	$(VENV)/bin/ruff check capnet app tests tools benchmarks app.py
	$(VENV)/bin/ruff format --check capnet app tests tools benchmarks app.py

test: $(STAMP) $(CHROMIUM) lint
	$(PY) -m pytest -q

app: $(STAMP)
	$(PY) app.py

# Benchmarks against bare open_clip (random ViT-B/16 and RN50 weights): writes benchmarks/results.md and
# .json, then the README's table from the JSON. BENCH_ARGS passes options through, e.g.
# make bench BENCH_ARGS="--threads 1" on a shared machine.
bench: $(STAMP)
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)
	$(PY) tools/readme_figures.py

# Mutation testing (mutmut) of the core modules, each against its own tests: slow, so not part of `make test`;
# run it before a release. Writes mutation/<module>.json and mutation/results.md (score, surviving mutants).
# MUTATE_ARGS passes options through, e.g. make mutate MUTATE_ARGS="losses metrics --max-children 1".
mutate: $(STAMP)
	$(PY) tools/mutate.py $(MUTATE_ARGS)

# The app under load on localhost (not part of `make test`): 20 rounds of 8 concurrent 16-image requests at
# the 40-megapixel limit; prints peak and idle RSS. SOAK_ARGS passes options, e.g. "--rounds 5 --format png".
soak: $(STAMP)
	$(PY) tools/soak.py $(SOAK_ARGS)

# The synthetic world: retrain the shipped tiny CLIP (about 20 minutes on two CPU cores), run the ablation.
pretrain: $(STAMP)
	$(PY) -m capnet.world.pretrain --out $(or $(PRETRAIN_OUT),runs/pretrain/capnet-synth.safetensors) \
		--steps 1500 --max-steps 1000 --batch-size 64 --lr 0.001 --weight-decay 0.1 --warmup 100 --seed 0 \
		--threads 1 --positives subset

ablation: $(STAMP)
	$(PY) -m capnet.world.ablation --out runs/ablation/world0 --world 0
	$(PY) -m capnet.world.ablation --out runs/ablation/world1 --world 1
	$(PY) tools/bundle_ablation_reports.py runs/ablation

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info

# The paper's protocol on real data (needs internet; a GPU for a run of minutes rather than hours):
# fetch DATASET (voc-lt or coco-lt) checksum-verified into data/, train, evaluate, serve the checkpoint.
# REPRODUCE_ARGS passes options through, e.g. REPRODUCE_ARGS="--yes --set train.seed=1".
DATASET ?= voc-lt
reproduce: $(STAMP)
	$(PY) -m capnet.cli reproduce $(DATASET) $(REPRODUCE_ARGS)
