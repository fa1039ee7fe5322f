# The README's two commands are `make run` and `make test`; both call `make bootstrap` first.
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?=
PYTEST_ARGS ?=

.PHONY: bootstrap run test lint bench clean

BOOTSTRAP_ARGS ?=

bootstrap:
	@scripts/bootstrap.sh $(BOOTSTRAP_ARGS)

# the agent needs none of the tests' peers built from the Go module proxy (Jaeger, a collector)
run: BOOTSTRAP_ARGS = --no-test-peers

run: bootstrap
	$(VENV)/bin/gotel run $(if $(CONFIG),--config $(CONFIG),)

test: bootstrap
	$(PY) -m pytest -ra $(PYTEST_ARGS)

lint: bootstrap
	$(VENV)/bin/ruff check gotel receivers processors exporters connectors extensions tests bench
	$(PY) scripts/typecheck.py

# Every benchmark prints its figures beside a baseline measured in the same run; none fails on time.
bench: bootstrap
	@for b in bench/*/*.py; do case $$b in */_*) continue;; esac; echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info gotel-data .pytest_cache .mypy_cache .ruff_cache
