# Two commands do all set-up on a fresh machine (Python >= 3.11 and pip):
#   make demo   train the embedded default (mnist5k, LeNet-5, MC dropout) and a readout
#               bottleneck on it, then evaluate both
#   make test   run the default test suite (slow tests excluded; `make test-slow` runs them)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: env demo test test-slow lint bench clean

env: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) train.py fit --config configs/mnist5k_lenet_mcdropout.yaml
	$(PY) train.py fit --config configs/mnist5k_readout.yaml
	$(PY) evaluate.py --ckpt checkpoints/mnist5k_lenet_mcdropout/last.ckpt --out reports/mnist5k_lenet_mcdropout \
		--readout checkpoints/mnist5k_readout/last.ckpt

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks train.py evaluate.py

bench: $(STAMP)
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/attribution.py
	$(PY) benchmarks/callbacks.py

clean:
	rm -rf $(VENV) logs reports .pytest_cache
