# The two set-up commands of the README: `make demo` and `make test`.
# Each creates .venv when it is missing and installs the project into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= runs/demo

.PHONY: demo test lint install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

# Reinstalls only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/animals10 demo --output $(DEMO_DIR)

# Formatting and lint rules (line length 120) live in pyproject.toml; `make test` runs them first.
lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

test: install lint
	$(BIN)/python -m pytest tests

clean:
	rm -rf $(VENV) runs .pytest_cache
