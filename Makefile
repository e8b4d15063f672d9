# hubbub — `make run` serves the demo, `make test` runs the whole suite; both set up first.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: setup run test test-fast lint bench bench-quick clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test,dev,client]'
	rm -f $(VENV)/.installed-*
	touch $@

run: setup
	$(BIN)/hypercorn --bind $(HOST):$(PORT) --worker-class uvloop 'app:create_app()'

test: setup
	$(BIN)/ruff check hubbub app tests $(wildcard bench) $(wildcard examples)
	$(BIN)/mypy hubbub app
	$(BIN)/pytest
	@if [ -d tests/js ]; then node --test tests/js/; fi

# Unit and backend tests only: seconds, no browser.
test-fast: setup
	$(BIN)/pytest tests/unit tests/backends -q

lint: setup
	$(BIN)/ruff check hubbub app tests $(wildcard bench) $(wildcard examples)
	$(BIN)/mypy hubbub app

# Benchmarks need matplotlib for the latency plot: the "bench" extra.
bench: setup
	$(BIN)/pip install --quiet -c constraints.txt -e '.[bench]'
	$(BIN)/python -m bench

bench-quick: setup
	$(BIN)/pip install --quiet -c constraints.txt -e '.[bench]'
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
