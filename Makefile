# The two commands a newcomer runs: `make demo` and `make test`.
# Both create .venv with the project's own install; nothing else is needed
# beyond Python, pip and make.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# One test worker per core (at most four): the suite's tests are mostly
# single-threaded, and each worker runs on one torch thread (tests/conftest.py).
# `make test PYTEST_ARGS=` runs it in one process.
PYTEST_ARGS ?= -n auto --maxprocesses 4 --dist worksteal

.PHONY: demo test docs bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# The stamp files re-run the install whenever the dependency lists change.
$(VENV)/.installed-all: setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[all]"
	touch $@

$(VENV)/.installed-dev: setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@ $(VENV)/.installed-all

demo: $(VENV)/.installed-all
	$(PY) examples/demo.py

test: $(VENV)/.installed-dev
	$(PY) -m pytest $(PYTEST_ARGS)

$(VENV)/.installed-docs: setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[docs]"
	touch $@

# -W: a warning (a broken reference, a docstring numpydoc cannot parse) fails the build.
docs: $(VENV)/.installed-docs
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html

bench: $(VENV)/.installed-dev
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache docs/_build
