# emunet: `make demo` runs the main job on the embedded default input; `make test` runs the tests.
# Both create (or reuse) .venv and install what they need.
#
# torch: a machine with CUDA keeps the user's own torch (the venv sees the system's
# site-packages when torch is importable there); elsewhere the CPU build is installed first
# (`pip install torch==2.13.0`, which is the CPU build on the CI machines; elsewhere set
# TORCH_INDEX=https://download.pytorch.org/whl/cpu) so that no multi-GB CUDA build is pulled.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.emunet-installed
PYTEST_ARGS ?=

.PHONY: demo test install bench clean-venv

$(STAMP): pyproject.toml
	@if [ ! -x "$(PY)" ]; then \
	  if $(PYTHON) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then \
	    echo "CUDA torch found: the venv will use it"; $(PYTHON) -m venv --system-site-packages $(VENV); \
	  else $(PYTHON) -m venv $(VENV); fi; \
	fi
	$(PY) -m pip install --quiet --upgrade pip
	@if $(PY) -c "import torch" 2>/dev/null; then \
	  echo "keeping the installed torch: $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	else \
	  echo "installing the CPU build of torch ($(TORCH_SPEC))"; \
	  $(PY) -m pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),); \
	fi
	$(PY) -m pip install --quiet -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/emunet demo $(DEMO_ARGS)

test: $(STAMP)
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests (exit 5)"; exit 1; fi; exit $$rc

bench: $(STAMP)
	$(PY) bench/bench_model.py
	$(PY) bench/bench_weightmap.py
	$(PY) bench/bench_metrics.py

clean-venv:
	rm -rf $(VENV)
