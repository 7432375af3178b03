# Two commands do all set-up: `make demo` and `make test` (see README).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
# The exact versions tested together (constraints/py3.11.txt); another Python installs the
# ranges of pyproject.toml instead.
LOCK   := $(wildcard constraints/py$(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null).txt)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
BROWSER_STAMP := $(VENV)/.browser-deps
LAB_PORT ?= 8888
# The lessons fetch Multi30k from this local copy first when it exists (absolute: they
# run from notebooks/). Set it yourself to a directory of files copied by hand.
MINDTRANS_MIRROR ?= $(abspath $(wildcard ../shared/data/multi30k))
export MINDTRANS_MIRROR

.PHONY: demo test test-compat lab bench fetch clean

$(STAMP): pyproject.toml $(LOCK)
	@test -n "$(PYTHON)" || { echo "Python 3.9-3.12 not found: install it or run make PYTHON=/path/to/python"; exit 1; }
	@test -n "$(LOCK)" || echo "No lock for $(PYTHON) in constraints/: installing the ranges of pyproject.toml (tested: Python 3.11)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(if $(LOCK),-c $(LOCK)) -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mindtrans demo

# Unit tests run one test file per worker (pytest-xdist), as many workers as cores.
# Then three suites run side by side, each keeping about one core busy (their tests mostly
# compile or run one kernel at a time): nbval over the lessons in fast mode, each from
# notebooks/ as its working directory (nbval-lax compares only the cells marked
# `# NBVAL_CHECK_OUTPUT`, after notebooks/nbval_sanitize.cfg); tests/browser, which opens each
# lesson in JupyterLab in headless Chromium, runs all cells (fast mode too: the kernels inherit
# it from the server) and saves screenshots to artifacts/screenshots/ (it needs Debian's
# chromium and Playwright, installed once by scripts/install_browser_deps.sh; where they cannot
# be, it is reported as skipped); and the compatibility suite (below). The last two write logs
# that are printed when all three are done; any one failing fails the target.
test: $(STAMP) $(BROWSER_STAMP)
	$(PY) -m pytest tests --ignore=tests/browser -n auto --dist loadfile
	@scripts/test_compat.sh > $(VENV)/test-compat.log 2>&1 & compat=$$!; \
	MINDTRANS_FAST=1 $(PY) -m pytest tests/browser > $(VENV)/test-browser.log 2>&1 & browser=$$!; \
	echo "browser and compatibility suites running beside the lessons (logs: $(VENV)/test-browser.log, $(VENV)/test-compat.log)"; \
	MINDTRANS_FAST=1 $(PY) -m pytest --nbval-lax --nbval-current-env \
		--nbval-sanitize-with notebooks/nbval_sanitize.cfg --nbval-cell-timeout 600 notebooks; lessons=$$?; \
	wait $$browser; browser_status=$$?; wait $$compat; compat_status=$$?; \
	cat $(VENV)/test-browser.log $(VENV)/test-compat.log; \
	test $$lessons -eq 0 && test $$browser_status -eq 0 && test $$compat_status -eq 0

# The model, train-step, decode and CLI tests on MindSpore 2.0.0 (Python 3.9) and 2.7.0
# (Python 3.10), in venvs cached under ~/.cache/mindtrans/compat (scripts/test_compat.sh).
test-compat:
	scripts/test_compat.sh

# No stamp when the install fails, so the next `make test` tries again.
$(BROWSER_STAMP): scripts/install_browser_deps.sh $(STAMP)
	scripts/install_browser_deps.sh $(PY) && touch $@ || \
		echo "Browser test dependencies missing (see above): tests/browser will be reported as skipped"

# JupyterLab listens on 127.0.0.1 only, with a fresh token (passed in the environment, not
# on the command line); port_retries=0 keeps it on LAB_PORT, so the printed URL is right.
lab: $(STAMP)
	$(PY) -m ipykernel install --user --name mindtrans --display-name "Python 3 (mindtrans)"
	@token=$$($(PY) -c 'import secrets; print(secrets.token_hex(24))'); \
	echo; echo "Kernel 'Python 3 (mindtrans)' registered. Open this URL in a browser:"; \
	echo; echo "    http://127.0.0.1:$(LAB_PORT)/lab?token=$$token"; echo; \
	echo "On a remote machine first run: ssh -L $(LAB_PORT):127.0.0.1:$(LAB_PORT) <host>"; \
	echo "Port taken? make lab LAB_PORT=8890. Stop with Ctrl-C twice."; echo; \
	JUPYTER_TOKEN=$$token exec $(VENV)/bin/jupyter lab --ip=127.0.0.1 --port=$(LAB_PORT) \
		--ServerApp.port_retries=0 --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

# Decoding is timed on lesson 04's trained model when it exists (an untrained one otherwise).
bench: $(STAMP)
	$(PY) benchmarks/bench_train.py --out benchmarks/results/bench_train.json
	$(PY) benchmarks/profile_train.py --out benchmarks/results/profile_train.json
	$(PY) benchmarks/bench_validation.py --out benchmarks/results/bench_validation.json
	$(PY) benchmarks/bench_decode.py $(if $(wildcard runs/04_translation/model.ckpt),--bundle runs/04_translation) \
		--out benchmarks/results/bench_decode.json
	$(if $(wildcard runs/04_translation/model.ckpt),$(PY) benchmarks/profile_decode.py --bundle runs/04_translation \
		--out benchmarks/results/profile_decode.json)

fetch: $(STAMP)
	$(VENV)/bin/mindtrans fetch

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
