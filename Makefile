# The two commands of the README: `make demo` (the main job) and `make test` (the tests). Both set up first.
PYTHON ?= python3
VENV := .venv
SERVING := .venv-serving
BIN := $(VENV)/bin
UV := $(BIN)/uv

.PHONY: setup demo test test-fast bench stack-up stack-down stack-status clean

setup: $(VENV)/.installed $(SERVING)/.installed

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

## Every test: unit, integration (real servers, started by the test fixtures) and end-to-end.
test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## Only the fast unit tests.
test-fast: setup
	$(BIN)/python -m pytest -m unit $(PYTEST_ARGS)

## Pipeline throughput vs the raw model, tiny and MiniLM (one JSON line each), on the local stack.
bench: setup
	$(BIN)/driftloop stack up
	$(BIN)/python bench/pipeline.py --encoder tiny --plot .stack/bench-pipeline-tiny.png
	$(BIN)/python bench/pipeline.py --encoder minilm --plot .stack/bench-pipeline-minilm.png

stack-up: setup
	$(BIN)/driftloop stack up
stack-down:
	$(BIN)/driftloop stack down
stack-status:
	$(BIN)/driftloop stack status

clean: stack-down
	rm -rf .stack
