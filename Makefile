# Every target sets up what it needs: a fresh clone runs `make test` or `make app` and nothing else.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.capnet-installed

CHROMIUM := /usr/bin/chromium

.PHONY: install test lint app bench mutate pretrain ablation clean

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

# The synthetic world: retrain the shipped tiny CLIP (about 20 minutes on two CPU cores), run the ablation.
pretrain: $(STAMP)
	$(PY) -m capnet.world.pretrain --out checkpoints/capnet-synth.safetensors --minutes 20

ablation: $(STAMP)
	$(PY) -m capnet.world.ablation --out runs/ablation

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
