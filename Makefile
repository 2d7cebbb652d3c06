# Every target sets up what it needs: a fresh clone runs `make test` or `make app` and nothing else.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.capnet-installed

.PHONY: install test lint app clean

$(STAMP): pyproject.toml requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check capnet app tests app.py
	$(VENV)/bin/ruff format --check capnet app tests app.py

test: $(STAMP) lint
	$(PY) -m pytest -q

app: $(STAMP)
	$(PY) app.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
