# The two commands a newcomer needs: `make serve` and `make test`. Both set up what is missing.
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= hsm_config/dev.toml

.PHONY: setup tools serve test lint typecheck check bench proto dist clean

setup:
	./softhsm_setup.sh

# The set-up plus what the tests and checks call (zbarimg, promtool, PostgreSQL, ruff, mypy).
tools:
	./softhsm_setup.sh --test-tools

serve: setup
	$(BIN)/signer serve --config $(CONFIG)

test: tools
	$(BIN)/pytest -q

lint: tools
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: tools
	$(BIN)/mypy signer tests

# What CI runs (.ci/run): lint, strict typecheck of code and tests, the whole suite.
check: lint typecheck test

bench: setup
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/issue.py

# Regenerate the gRPC stubs in signer/v1 from protos/ (a test fails when they are stale).
proto:
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. \
		--pyi_out=. protos/signer/v1/*.proto

# The wheel and sdist the deployment installs (deploy/README.md), in dist/.
dist:
	$(BIN)/python -m build --outdir dist .

clean:
	rm -rf $(VENV) data out dist build .pytest_cache .mypy_cache .ruff_cache
