# One entry point for people and CI alike.
PYTHON ?= python3
VENV   ?= .venv
# pytest workers (pytest-xdist): most tests wait on sockets and subprocesses, so more
# workers than cores pay off; TEST_JOBS=0 runs everything in one process.
TEST_JOBS ?= 4
BIN     = $(VENV)/bin

.PHONY: up test lint typecheck lock proto bench clean

$(BIN)/trustmesh: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $@

## Start the whole stack with the demo (state in .trustmesh/).
up: $(BIN)/trustmesh
	$(BIN)/trustmesh up

## Lint, type-check and run the whole test suite.
test: $(BIN)/trustmesh lint typecheck
	$(BIN)/python -m pytest -n $(TEST_JOBS) --dist loadgroup

lint: $(BIN)/trustmesh
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(BIN)/trustmesh
	$(BIN)/mypy

## Re-pin dependencies (needs the package registry).
lock: $(BIN)/trustmesh
	$(BIN)/uv pip compile pyproject.toml --extra dev --generate-hashes --python-version 3.11 --universal \
	    -o requirements.lock -q

## Regenerate the Workload API protobuf modules (needs grpcio-tools).
proto:
	$(BIN)/python -m pip install --quiet grpcio-tools
	cd src && ../$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. \
	    trustmesh/_proto/workload.proto

bench: $(BIN)/trustmesh
	$(BIN)/python benchmarks/svid_issuance.py
	$(BIN)/python benchmarks/serve_overhead.py
	$(BIN)/python benchmarks/token_issuance.py
	$(BIN)/python benchmarks/token_check.py
	$(BIN)/python benchmarks/audit_ledger.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
