# fidobook — the README's two commands are `make book` and `make test`; both set up first.
SHELL := /bin/bash
PYTHON_BASE ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
CACHE ?= .cache
PROFILE ?= auto
# Fixed thread count: CPU results then reproduce bit for bit (see PLATFORM notes in the README).
export OMP_NUM_THREADS ?= 2
export PYTHONHASHSEED = 0

.PHONY: setup data train book test clean

# The stamp depends on the dependency files, so editing them re-runs the install.
$(VENV)/.installed: pyproject.toml constraints.txt
	@command -v $(PYTHON_BASE) >/dev/null || { echo "need $(PYTHON_BASE) on PATH"; exit 1; }
	@test -x $(PY) || $(PYTHON_BASE) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,book]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	$(PY) -c "import torch, torchvision; torchvision.ops.nms(torch.zeros(1, 4), torch.ones(1), 0.5); print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	@touch $@

setup: $(VENV)/.installed

data: setup
	$(PY) -m fidobook.cli data --profile $(PROFILE) --cache-dir $(CACHE)

train: data
	$(PY) -m fidobook.cli train --profile $(PROFILE) --cache-dir $(CACHE)

book: train

test: setup
	$(PY) -m pytest

clean:
	rm -rf book/_build book/chapters
