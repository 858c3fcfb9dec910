# Every target sets up its own virtual environment: `make test` on a fresh clone works.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test test-slow demo bench clean browser-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# pinned CPU build: a plain `torch` would pull gigabytes of CUDA packages
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

test: $(STAMP) browser-deps
	OMP_NUM_THREADS=2 $(PY) -m pytest -q

# tests/test_server_browser.py drives Debian's chromium; a no-op when it is installed
# (or when CSA_SKIP_BROWSER=1).
browser-deps:
	@[ -x /usr/bin/chromium ] || [ "$$CSA_SKIP_BROWSER" = 1 ] || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium; }

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

demo: $(STAMP)
	$(VENV)/bin/csa demo

bench: $(STAMP)
	$(PY) benchmarks/csa_layer.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info
