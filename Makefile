# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
#
# Both install from the lock, requirements-lock.txt: the exact version of every package,
# transitive ones included, so a fresh machine gets what CI tested. `make lock` refreshes it
# (the newest releases pyproject's ranges admit, in a throwaway venv), then test before committing.
# torch is the CPU build on this machine's disk: an unpinned torch would pull a multi-GB CUDA build.
#
# `make test-compat` tests the oldest releases pyproject admits (FLOORS: its lower bounds), in a
# second venv (docs/compat.md). `make test-compat PINS="torch==2.13.0 transformers==5.23.0"` tests
# other releases (the rest: the newest pip finds that fit them).
PYTHON ?= python3
VENV ?= .venv
LOCK := requirements-lock.txt
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := -m pip install -q --disable-pip-version-check
STAMP := $(VENV)/.multisense-installed

COMPAT_VENV ?= .venv-compat
# pyproject's lower bounds, each one here: keep them equal
FLOORS = torch==2.13.0 transformers==5.0.0 tokenizers==0.22.1 safetensors==0.4.3 numpy==1.26.4 tqdm==4.66.0 \
	matplotlib==3.8.0 pillow==10.1.0 pyyaml==6.0.1 scikit-learn==1.3.0 peft==0.18.0 \
	librosa==0.11.0 mujoco==4.0.1 scikit-image==0.26.0
PINS ?= $(FLOORS)
COMPAT_TESTS ?= tests/nn tests/lm tests/models tests/encoders tests/data tests/eval

.PHONY: setup demo demo-touch test lint test-slow test-compat lock bench clean

$(STAMP): pyproject.toml $(LOCK) Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) $(PIP) -r $(LOCK)
	$(PY) $(PIP) --no-deps -e ".[test]"
	$(PY) -m pip check
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m multisense demo

demo-touch: $(STAMP)
	$(PY) -m multisense demo touch

test: $(STAMP)
	$(PY) -m ruff check src tests
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check src tests

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python $(PIP) "$(TORCH_SPEC)"
	.venv-lock/bin/python $(PIP) -e ".[test]"
	{ echo "# The exact environment \`make test\` and \`make demo\` install. Made by \`make lock\`; do not edit."; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable; } > $(LOCK)
	rm -rf .venv-lock
	@echo "wrote $(LOCK); run make test (the stamp sees the new lock) before committing it"

test-compat:
	rm -rf $(COMPAT_VENV) && $(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/python $(PIP) $(PINS)
	$(COMPAT_VENV)/bin/python $(PIP) -e ".[test]" $(PINS)
	$(COMPAT_VENV)/bin/python -m pip freeze --exclude-editable > $(COMPAT_VENV)/versions.txt
	cat $(COMPAT_VENV)/versions.txt
	$(COMPAT_VENV)/bin/python -m pytest $(COMPAT_TESTS)

bench: $(STAMP)
	$(PY) -m multisense bench

clean:
	rm -rf $(VENV) $(COMPAT_VENV) .venv-lock runs .pytest_cache .hypothesis
