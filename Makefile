# Two entry points for a fresh machine with only Python: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PIN := torch==2.13.0
EXAMPLE := examples/SynBraTS_3000_000

.PHONY: demo test test-all install-runtime install-dev clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

install-runtime: $(PY)
	$(PIP) install -q .

# The pinned CPU torch goes in first so that the 'export' extra does not pull a CUDA build.
install-dev: $(PY)
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q -e '.[export,dev]'

demo: install-runtime
	$(VENV)/bin/seg-edge predict $(EXAMPLE) --out out/demo/ --overwrite
	$(VENV)/bin/seg-edge evaluate out/demo/ $(EXAMPLE)

test: install-dev
	$(PY) -m pytest -q

test-all: install-dev
	$(PY) -m pytest -q -m ''

clean:
	rm -rf out build *.egg-info src/*.egg-info .pytest_cache
