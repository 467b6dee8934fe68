# `make serve`: set up, then serve the models in model_store/ on $(HOST):$(PORT).
# `make test`:  set up, then run the whole test suite.
# Both are idempotent: a second run only does what changed.
# On a GPU host: `make serve GPU=cuda` (or GPU=tensorrt) also installs that provider's libraries
# and serves on it, refusing to start rather than falling back to CPU; `make gpu-check GPU=cuda`
# measures what the service gets out of the GPU, in one report (python -m loadtests.gpu_check).

PYTHON ?= python3
VENV   ?= .venv
HOST   ?= 127.0.0.1
PORT   ?= 3000
GPU    ?=
BIN    := $(VENV)/bin

ifeq ($(GPU),)
GPU_STAMP :=
else ifeq ($(GPU),cuda)
GPU_STAMP := $(VENV)/.gpu-cuda
GPU_EXTRA := gpu
else ifeq ($(GPU),tensorrt)
GPU_STAMP := $(VENV)/.gpu-tensorrt
GPU_EXTRA := tensorrt
else
$(error GPU must be cuda or tensorrt, not '$(GPU)')
endif

.PHONY: serve test gpu-check demo bento clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Serving install: no torch.
$(VENV)/.serve: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

# The GPU provider's runtime libraries (CUDA 13, cuDNN 9, cuBLAS; TensorRT 10), as pip packages.
$(VENV)/.gpu-%: pyproject.toml $(VENV)/.serve
	$(BIN)/pip install --quiet -e '.[$(GPU_EXTRA)]'
	touch $@

# Everything: export (torch), load tests, test tools.
$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.serve

serve: $(VENV)/.serve $(GPU_STAMP)
	$(if $(GPU),INSPECTION_PROVIDER=$${INSPECTION_PROVIDER:-$(GPU)}) \
	$(BIN)/bentoml serve service.inspection_service:InspectionService --host $(HOST) --port $(PORT)

test: $(VENV)/.dev $(GPU_STAMP)
	tests/with_services.sh $(BIN)/pytest

# Provider probe, batch shapes, a short served benchmark of every demo model and the gpu tests, in
# at most ~7.5 minutes; report in loadtests/results/gpu-check/ (ARGS="--out DIR" elsewhere). Where
# there is no GPU it says why and exits 0.
gpu-check: $(VENV)/.dev $(GPU_STAMP)
	$(BIN)/python -m loadtests.gpu_check $(ARGS)

# Retrain and export the demo models as new versions in model_store/.
demo: $(VENV)/.dev
	$(BIN)/python -m export demo --store model_store

bento: $(VENV)/.serve
	$(BIN)/bentoml build

clean:
	rm -rf $(VENV) build *.egg-info
