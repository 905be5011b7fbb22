# The two commands a newcomer needs: `make serve` and `make test`. Both set up what is missing.
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= hsm_config/dev.toml

.PHONY: setup tools serve test test-p11kit lint typecheck check bench bench-network-hsm proto dist clean

# The signing-path and key-ceremony tests a second time, through p11-kit's remote client module
# in front of SoftHSM (a real `p11-kit server` per test token): every change proven on two
# module paths.
P11KIT_TESTS := tests/test_signing_api.py tests/test_key_ceremony.py tests/test_hsm_portability.py

setup:
	./softhsm_setup.sh

# The set-up plus what the tests and checks call (zbarimg, promtool, PostgreSQL, p11-kit, ruff, mypy).
tools:
	./softhsm_setup.sh --test-tools

serve: setup
	$(BIN)/signer serve --config $(CONFIG)

test: tools
	$(BIN)/pytest -q

test-p11kit: tools
	$(BIN)/pytest -q --pkcs11-remote $(P11KIT_TESTS)

lint: tools
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: tools
	$(BIN)/mypy signer tests

# What CI runs (.ci/run): lint, strict typecheck of code and tests, the whole suite, and the
# signing-path and ceremony tests again through p11-kit remoting.
check: lint typecheck test test-p11kit

bench: setup
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/issue.py

# Network-HSM throughput: p11-kit remoting with 1 ms added per PKCS#11 call, workers = one per
# core vs "auto", and PKCS#11 calls per signature (README "HSM modules").
bench-network-hsm: setup
	$(BIN)/python benchmarks/network_hsm.py

# Regenerate the gRPC stubs in signer/v1 from protos/ (a test fails when they are stale).
proto:
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. \
		--pyi_out=. protos/signer/v1/*.proto

# The wheel and sdist the deployment installs (deploy/README.md), in dist/.
dist:
	$(BIN)/python -m build --outdir dist .

clean:
	rm -rf $(VENV) data out dist build .pytest_cache .mypy_cache .ruff_cache
