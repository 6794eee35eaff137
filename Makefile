# The two commands a newcomer runs: `make demo` and `make test`.
# Both create .venv with the project's own install; nothing else is needed
# beyond Python, pip and make.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=

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
