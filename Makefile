# fidobook — the README's two commands are `make book` and `make test`; both set up first.
SHELL := /bin/bash
PYTHON_BASE ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
CACHE ?= .cache
PROFILE ?= auto
# `make book CHAPTERS=01_concrete,02_fido FORCE=1`: only these chapters; execute even if up to date.
CHAPTERS ?=
FORCE ?=
# The book on one's own data: `make book PROFILE=cub DATA=path/CUB_200_2011 WEIGHTS=r50.pt ARCH=resnet50`
# (a CUB-200-2011-format folder; a torchvision ResNet state dict; without WEIGHTS the profile's
# classifier is trained on DATA).
DATA ?=
WEIGHTS ?=
ARCH ?=
# Fixed thread count: CPU results then reproduce bit for bit (see PLATFORM notes in the README).
export OMP_NUM_THREADS ?= 2
export PYTHONHASHSEED = 0

.PHONY: setup vendor chromium data train book chapters html check test clean

# The stamp depends on the dependency files, so editing them re-runs the install.
$(VENV)/.installed: pyproject.toml constraints.txt
	@command -v $(PYTHON_BASE) >/dev/null || { echo "need $(PYTHON_BASE) on PATH"; exit 1; }
	@test -x $(PY) || $(PYTHON_BASE) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,book]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	$(PY) -c "import torch, torchvision; torchvision.ops.nms(torch.zeros(1, 4), torch.ones(1), 0.5); print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	@touch $@

# MathJax 3 and the ipywidgets embed scripts, from the npm registry, for the offline HTML.
# Always asked: it returns at once when the vendored files match their recorded SHA-256, and
# fetches them again when one is missing or damaged.
vendor: $(VENV)/.installed
	$(PY) -m fidobook.book vendor

# Headless Chromium checks the built pages (make test); installed with apt when missing.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  echo "installing chromium (headless browser for the book's checks; about 75 s)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq chromium; fi; }

setup: $(VENV)/.installed vendor chromium

data: setup
	$(PY) -m fidobook.cli data --profile $(PROFILE) --cache-dir $(CACHE)

train: data
	$(PY) -m fidobook.cli train --profile $(PROFILE) --cache-dir $(CACHE)

# The book: execute the chapters that changed (papermill, progress shown) into book/chapters/,
# then the strict HTML build into book/_build/html, then the offline check of the pages.
# With DATA, the chapters prepare their data and models themselves (nothing to generate).
chapters: $(if $(DATA),setup,train)
	FIDOBOOK_CACHE=$(abspath $(CACHE)) $(PY) -m fidobook.book run --profile $(PROFILE) \
	  $(if $(DATA),--data-dir $(DATA)) $(if $(WEIGHTS),--weights $(WEIGHTS)) $(if $(ARCH),--arch $(ARCH)) \
	  $(if $(CHAPTERS),--chapters $(CHAPTERS)) $(if $(FORCE),--force)

html: setup
	$(PY) -m fidobook.book build

check: setup
	$(PY) -m fidobook.book check

book: chapters
	$(MAKE) --no-print-directory html check

test: setup
	$(PY) -m pytest

clean:
	rm -rf book/_build book/chapters
