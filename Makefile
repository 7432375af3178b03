# Two commands do all set-up: `make demo` and `make test` (see README).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lab bench fetch clean

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.10-3.12 not found: install it or run make PYTHON=/path/to/python"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mindtrans demo

test: $(STAMP)
	$(PY) -m pytest

lab: $(STAMP)
	$(PY) -m ipykernel install --user --name mindtrans --display-name "Python 3 (mindtrans)"
	$(VENV)/bin/jupyter lab --ip=127.0.0.1 --notebook-dir=notebooks

bench: $(STAMP)
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_decode.py

fetch: $(STAMP)
	$(VENV)/bin/mindtrans fetch

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
