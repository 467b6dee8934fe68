# `make serve`: set up, then serve the models in model_store/ on $(HOST):$(PORT).
# `make test`:  set up, then run the whole test suite.
# Both are idempotent: a second run only does what changed.

PYTHON ?= python3
VENV   ?= .venv
HOST   ?= 127.0.0.1
PORT   ?= 3000
BIN    := $(VENV)/bin

.PHONY: serve test demo bento clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Serving install: no torch.
$(VENV)/.serve: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

# Everything: export (torch), load tests, test tools.
$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.serve

serve: $(VENV)/.serve
	$(BIN)/bentoml serve service.service:InspectionService --host $(HOST) --port $(PORT)

test: $(VENV)/.dev
	tests/with_services.sh $(BIN)/pytest

# Retrain and export the demo models as new versions in model_store/.
demo: $(VENV)/.dev
	$(BIN)/python -m export demo --store model_store

bento: $(VENV)/.serve
	$(BIN)/bentoml build

clean:
	rm -rf $(VENV) build *.egg-info
