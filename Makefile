# Two entry points for a fresh machine: `make run` (main job on embedded data) and `make test`.
# Both create or reuse .venv and (re)install the project when pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: run test test-all notebooks lint format clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

run: $(STAMP)
	WANDB_MODE=$${WANDB_MODE:-offline} $(PY) -m rgap_bench $(ARGS)

test: $(STAMP)
	WANDB_MODE=offline $(PY) -m pytest -q

test-all: $(STAMP)
	WANDB_MODE=offline $(PY) -m pytest -q -m ''

# Re-execute the notebooks in place (in notebooks/, with this checkout's package) so the committed files carry
# fresh outputs, pictures included; no per-cell timestamps, so a rerun changes only what the cells print.
notebooks: $(STAMP)
	for nb in notebooks/*.ipynb; do \
	  PYTHONPATH=$(CURDIR) $(PY) -c 'import sys, nbclient, nbformat; nb = nbformat.read(sys.argv[1], 4); \
	  nbclient.NotebookClient(nb, timeout=600, record_timing=False, resources={"metadata": {"path": "notebooks"}}).execute(); \
	  nbformat.write(nb, sys.argv[1])' $$nb || exit 1; \
	done

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf outputs multirun wandb .pytest_cache .ruff_cache
