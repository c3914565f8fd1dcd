# prunetune: two commands do all the set-up.
#   make demo   create .venv, install, make sure the data is there, run a small real search
#   make test   install what the tests need, run the suite (make test-slow: the slow drills)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: venv install data demo pretrain-demo test test-slow lint clean gpu-wheels

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

# The stamp is re-made whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e ".[dev,timm,peers]"
	touch $@

venv install: $(VENV)/.installed

# Fashion-MNIST comes from Debian's dataset-fashion-mnist package (no download at run time).
data:
	@if [ -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then \
	  echo "Fashion-MNIST found in $(FMNIST)"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update && apt-get install -y dataset-fashion-mnist; \
	else \
	  echo "Fashion-MNIST missing: run 'sudo apt-get install dataset-fashion-mnist'" \
	       "or set PRUNETUNE_DATA to a folder holding the four idx .gz files"; exit 1; \
	fi

demo: install data
	$(BIN)/prunetune demo

# The suite without the slow drills (a killed and resumed search, a 2-node cluster, the UI in
# a browser, the README's Ray Tune example); `make test-slow` runs those, and CI runs both.
test: install
	$(BIN)/python -m pytest -q -m "not slow" --durations=15 tests

test-slow: install
	$(BIN)/python -m pytest -q -m slow tests

# Pure-Python packages (and pydantic's compiled core) the GPU machine's image lacks, for its
# Python 3.12, into benchmarks/gpu_wheels/ (git-ignored): carry that folder with
# benchmarks/gpu_suite.sh. The versions are the ones the test suite runs with.
GPU_WHEELS := torch-pruning==1.6.1 pydantic==2.14.4 pydantic-core==2.50.5 \
              annotated-types==0.8.0 typing-inspection==0.4.5
gpu-wheels: install
	$(BIN)/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
	  --platform manylinux2014_x86_64 -d benchmarks/gpu_wheels $(GPU_WHEELS)

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
