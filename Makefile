# One entry point for people and CI alike.
PYTHON ?= python3
VENV   ?= .venv
# pytest workers (pytest-xdist): most tests wait on sockets and subprocesses, so more
# workers than cores pay off; TEST_JOBS=0 runs everything in one process.
TEST_JOBS ?= 4
BIN     = $(VENV)/bin
# the CI gates (make gates)
GATES   = gate-bandit gate-config gate-dockerfile gate-secrets gate-sbom gate-audit

.PHONY: up test gates $(GATES) lint typecheck lock proto bench clean

$(BIN)/trustmesh: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $@

# checkov (the rendered Kubernetes manifests' checks) in a virtualenv of its own: its pins
# conflict with the project's (it would downgrade packaging under pysigma and pytest)
CHECKOV = .venv-checkov/bin/checkov
$(CHECKOV): requirements-checkov.lock
	$(PYTHON) -m venv .venv-checkov
	.venv-checkov/bin/python -m pip install --quiet --require-hashes -r requirements-checkov.lock
	@touch $@

## Start the whole stack with the demo (state in .trustmesh/).
up: $(BIN)/trustmesh
	$(BIN)/trustmesh up

## Lint, type-check, run the CI gates and the whole test suite.
# (checkov's install, lint, the type check and the gates side by side: on two cores they
# take about a minute together, against two one after another)
test: $(BIN)/trustmesh
	@$(MAKE) --no-print-directory -j4 --output-sync=target $(CHECKOV) lint typecheck gates
	$(BIN)/python -m pytest -n $(TEST_JOBS) --dist loadgroup --durations=30

## The CI gates: SAST (bandit, medium severity and up, each ignore justified inline), the
## shipped declaration in strict mode, the Dockerfile's lint, secret scanning against the
## audited .secrets.baseline, a CycloneDX SBOM of the lock (artifacts/sbom.cdx.json) checked
## against it, and pip-audit over the lock. Where no vulnerability service answers, the
## audit prints NOT RUN and passes; TRUSTMESH_REQUIRE_AUDIT=1 makes that a failure.
# three at a time (the audit mostly waits on the network), each one's output kept together
gates: $(BIN)/trustmesh
	@mkdir -p artifacts
	@$(MAKE) --no-print-directory -j3 --output-sync=target $(GATES)

# the report goes to artifacts/ (bandit warns on stderr of every nosec on a multi-line
# statement, which drowned the verdict), and is printed when it fails
gate-bandit:
	@rm -f artifacts/bandit.txt artifacts/bandit.err
	$(BIN)/bandit -c pyproject.toml -r src --severity-level medium --quiet \
	    -f txt -o artifacts/bandit.txt 2>artifacts/bandit.err \
	    && echo "bandit: ok: no finding of medium severity or above in src/" \
	    || { cat artifacts/bandit.txt artifacts/bandit.err; exit 1; }

gate-config:
	$(BIN)/trustmesh config check --strict --config src/trustmesh/config/default.yaml

gate-dockerfile:
	$(BIN)/hadolint --no-color --failure-threshold style Dockerfile && echo "hadolint: ok: Dockerfile"

gate-secrets:
	$(BIN)/python -m trustmesh.devsecops secrets-check .secrets.baseline

# (the lock lists no dependency graph: cyclonedx-py's warning that the root's is empty says
# nothing here)
gate-sbom:
	PYTHONWARNINGS=ignore::UserWarning $(BIN)/cyclonedx-py requirements requirements.lock \
	    --pyproject pyproject.toml --output-reproducible -o artifacts/sbom.cdx.json
	$(BIN)/python -m trustmesh.devsecops sbom-check artifacts/sbom.cdx.json requirements.lock

gate-audit:
	$(BIN)/python -m trustmesh.devsecops audit requirements.lock

lint: $(BIN)/trustmesh
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(BIN)/trustmesh
	$(BIN)/mypy

## Re-pin dependencies (needs the package registry): the whole set with the dev extra, and
## the run-time subset (same versions) that the container image installs.
lock: $(BIN)/trustmesh
	$(BIN)/uv pip compile pyproject.toml --extra dev --generate-hashes --python-version 3.11 --universal \
	    -o requirements.lock -q
	$(BIN)/uv pip compile pyproject.toml --generate-hashes --python-version 3.11 --universal \
	    -c requirements.lock -o requirements-runtime.lock -q
	echo "checkov==3.3.30" | $(BIN)/uv pip compile - --generate-hashes --python-version 3.11 \
	    --universal -o requirements-checkov.lock -q

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
