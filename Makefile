# prunetune: two commands do all the set-up.
#   make demo   create .venv, install, make sure the data is there, run a small real search
#   make test   install what the tests need, run the suite (make test-slow: the slow drills)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: venv install data demo pretrain-demo test test-slow lint clean

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
	$(BIN)/python -m pytest -q -m "not slow" tests

test-slow: install
	$(BIN)/python -m pytest -q -m slow tests

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
