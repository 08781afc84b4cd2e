# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# torch comes from TORCH_SPEC: on the CPU machines here torch==2.13.0 is a local CPU build;
# an unpinned torch would pull a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.multisense-installed

.PHONY: setup demo test test-slow bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m multisense demo

test: $(STAMP)
	$(PY) -m pytest

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

bench: $(STAMP)
	$(PY) -m multisense bench

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
