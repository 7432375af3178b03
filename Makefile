# Two commands do all set-up: `make demo` and `make test` (see README).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The lessons fetch Multi30k from this local copy first when it exists (absolute: they
# run from notebooks/). Set it yourself to a directory of files copied by hand.
MINDTRANS_MIRROR ?= $(abspath $(wildcard ../shared/data/multi30k))
export MINDTRANS_MIRROR

.PHONY: demo test lab bench fetch clean

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.10-3.12 not found: install it or run make PYTHON=/path/to/python"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mindtrans demo

# Lessons run in fast mode, each from notebooks/ as its working directory; nbval-lax
# compares only the cells marked `# NBVAL_CHECK_OUTPUT` (after notebooks/nbval_sanitize.cfg).
test: $(STAMP)
	$(PY) -m pytest tests
	MINDTRANS_FAST=1 $(PY) -m pytest --nbval-lax --nbval-current-env \
		--nbval-sanitize-with notebooks/nbval_sanitize.cfg --nbval-cell-timeout 600 notebooks

lab: $(STAMP)
	$(PY) -m ipykernel install --user --name mindtrans --display-name "Python 3 (mindtrans)"
	@echo "Kernel 'Python 3 (mindtrans)' registered. Open the http://127.0.0.1:8888/lab?token=... URL"
	@echo "printed below in a browser; on a remote machine first run: ssh -L 8888:127.0.0.1:8888 <host>"
	$(VENV)/bin/jupyter lab --ip=127.0.0.1 --notebook-dir=notebooks

bench: $(STAMP)
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_decode.py

fetch: $(STAMP)
	$(VENV)/bin/mindtrans fetch

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
