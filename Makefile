# Fresh machine: `make demo` sets up .venv and runs the main job; `make test` sets up and runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-timm

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/attendnets demo

test: setup
	$(PY) -m pytest -n 2 -q --durations=15

# timm's own tests/test_models.py (from the timm sdist of the installed version) on our models; needs PyPI.
test-timm: setup
	PYTHON=$(abspath $(PY)) .ci/timm_model_tests.sh
