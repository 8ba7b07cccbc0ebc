# The README's two commands: `make dev` and `make test`. Both bootstrap the virtualenv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup dev dev-cluster test lint bench soak fuzz clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "ordersaga needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

dev: setup
	$(BIN)/ordersaga dev

# Three NATS nodes clustered on loopback (streams at R3) and two of each service process.
dev-cluster: setup
	$(BIN)/ordersaga dev --cluster

test: setup lint
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: setup
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python bench/saga_e2e.py
	$(BIN)/python bench/event_store.py
	$(BIN)/python bench/projector.py

# Chaos soak: 1000 sagas while every part is killed and one server is down for over a minute.
soak: setup
	$(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) .ordersaga

# The OpenAPI fuzzer of the suite, with a larger budget (10 minutes, 300 examples an operation);
# prints the fuzzer's summary (cases generated, phases, failures).
fuzz: setup
	ORDERSAGA_FUZZ_EXAMPLES=300 ORDERSAGA_FUZZ_SECONDS=600 $(BIN)/pytest -s tests/e2e/test_openapi_fuzz.py

# deploy/ checked offline, alone (make test runs the same tests): compose spec, Kubernetes
# schemas, kustomize overlays, Helm values, Containerfile lint, settings names.
.PHONY: deploy-check
deploy-check: setup
	$(BIN)/pytest tests/deploy -q
