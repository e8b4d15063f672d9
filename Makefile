# hubbub — `make run` serves the demo, `make test` runs the whole suite; both set up first.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
SUM     = $(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
RUN_STAMP  = $(VENV)/.run-$(SUM)
TEST_STAMP = $(VENV)/.test-$(SUM)
BENCH_STAMP = $(VENV)/.bench-$(SUM)
HOST   ?= 127.0.0.1
PORT   ?= 8000

JS_CHECKS = tests/js/node_modules/.package-lock.json
NODE_WS   = bench/node/node_modules/.package-lock.json

.PHONY: setup run test test-fast lint lint-js bench-tools bench bench-quick clean

setup: $(TEST_STAMP) $(JS_CHECKS)

$(BIN)/python:
	@echo "==> creating $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# What the server needs, and nothing more (make run): about 15 s and 80 MB the first time.
$(RUN_STAMP): pyproject.toml constraints.txt | $(BIN)/python
	@echo "==> installing hubbub and what it needs to serve, at the tested versions (constraints.txt)"
	$(BIN)/pip install --progress-bar on -c constraints.txt -e .
	rm -f $(VENV)/.run-*
	touch $@

# And the test and lint tools (make test).
$(TEST_STAMP): $(RUN_STAMP)
	@echo "==> installing the test and lint tools"
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test,dev,client]'
	rm -f $(VENV)/.test-*
	touch $@

# TypeScript, to check the browser client's types (npm ci: the exact version of package-lock.json).
$(JS_CHECKS): tests/js/package.json tests/js/package-lock.json
	@echo "==> installing the client's type checker (tests/js)"
	cd tests/js && npm ci --no-audit --no-fund --loglevel=error

run: $(RUN_STAMP)
	@echo "==> serving the demo on http://$(HOST):$(PORT) (another port: make run PORT=9000; Ctrl-C stops)"
	@$(BIN)/python -m app serve --host $(HOST) --port $(PORT)

test: setup lint-js
	$(BIN)/ruff check hubbub app tests $(wildcard bench) $(wildcard examples)
	$(BIN)/mypy hubbub app
	$(BIN)/pytest
	node --test tests/js/

# The browser client's JSDoc, and hubbub.d.ts against the implementation (tests/js/tsconfig.json).
lint-js: $(JS_CHECKS)
	rm -rf tests/js/types/generated
	cd tests/js && npx --no-install tsc -p tsconfig.declarations.json && npx --no-install tsc -p tsconfig.json

# Unit and backend tests only: seconds, no browser.
test-fast: setup
	$(BIN)/pytest tests/unit tests/backends -q

lint: setup lint-js
	$(BIN)/ruff check hubbub app tests $(wildcard bench) $(wildcard examples)
	$(BIN)/mypy hubbub app

# Benchmarks need matplotlib for the latency plot (the "bench" extra) and ws for the Node
# reference server (bench/node, npm ci: the exact version of package-lock.json).
# Every scenario in turn (docs/performance.md): one room, many rooms, the reconnect storm,
# Redis against memory, 15,000 idle connections. bench-quick: the same at a smaller N.
BENCH_SCENARIOS = rooms storm redis idle

bench-tools: setup $(BENCH_STAMP) $(NODE_WS)

$(BENCH_STAMP): $(TEST_STAMP)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[bench]'
	rm -f $(VENV)/.bench-*
	touch $@

$(NODE_WS): bench/node/package.json bench/node/package-lock.json
	cd bench/node && npm ci --no-audit --no-fund --loglevel=error

# Medians of 3 where figures move between runs; one run of the idle scenario, whose RSS and
# CPU per connection do not (about 25 minutes in all on the machine of docs/performance.md).
bench: bench-tools
	$(BIN)/python -m bench
	$(BIN)/python -m bench --only rooms --runs 3
	$(BIN)/python -m bench --only storm --runs 3
	$(BIN)/python -m bench --only redis --runs 3
	$(BIN)/python -m bench --only idle --runs 1

bench-quick: bench-tools
	$(BIN)/python -m bench --quick
	for s in $(BENCH_SCENARIOS); do $(BIN)/python -m bench --quick --only $$s || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist tests/js/node_modules tests/js/types/generated
