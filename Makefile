# Two commands for a fresh machine: `make demo` (the live edge in front of three local origins) and `make test`.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
# python3.12: on PATH (pyenv's shim reads .python-version), else any pyenv-installed 3.12.
PYTHON312 := $(shell command -v python3.12 2>/dev/null || ls -d $(HOME)/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | tail -n 1)

.PHONY: demo test test-fast test-resilience bench conformance lint format docs system-deps venv clean

venv: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	@test -n "$(PYTHON312)" || { echo "python3.12 is required (mitmproxy 12 needs Python >= 3.12)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON312) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

# redis-server (shared-state tests) and wrk (benchmarks) come from Debian; installed when missing and we are root.
system-deps:
	@missing=""; for p in redis-server wrk; do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "please install:$$missing (Redis tests will be skipped)"; fi; \
	fi

demo: venv
	$(BIN)/python examples/demo.py

test: venv system-deps
	$(BIN)/edgerules validate rules/aybiza.yaml examples/minimal.yaml
	$(BIN)/edgerules test rules/ --coverage
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -p no:cacheprovider
	# the end-to-end suite again, every edge started as `edgerules serve` instead of `mitmdump -s addon.py`
	EDGERULES_E2E_RUNNER=serve $(BIN)/python -m pytest -q -m "e2e and not resilience" -n 2 --dist loadfile -p no:cacheprovider

test-fast: venv
	$(BIN)/python -m pytest -q -m "not e2e and not resilience and not browser" -p no:cacheprovider

test-resilience: venv system-deps
	$(BIN)/python -m pytest -q -m resilience -p no:cacheprovider

bench: venv system-deps
	$(BIN)/python bench/run.py

# The public HTTP caching conformance suite against the edge: CACHE_TESTS=/path/to/cache-tests make conformance
# (a checkout of github.com/http-tests/cache-tests with `npm install` done; never copied into this repository).
conformance: venv
	$(BIN)/python bench/conformance.py --runner $${RUNNER:-serve} --runs $${RUNS:-1}

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports  # the layer contracts in pyproject.toml ([tool.importlinter])
	$(BIN)/mypy  # the types ([tool.mypy] in pyproject.toml): zero errors

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

docs: venv
	$(BIN)/python -m edgerules.tools.docgen > docs/policy-reference.md

clean:
	rm -rf $(VENV) .edgerules-state rules/.edgerules-state .pytest_cache .ruff_cache
