# ffsd-tf: `make quickstart` trains on real Fashion-MNIST offline; `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: venv install parity-deps fashion-mnist quickstart test example bench parity clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

# The package itself (ffsd_tf + console scripts ffsd-train/-export/-report/-visualize) into the venv.
install: venv
	$(PIP) install --quiet .
	rm -rf build

# CPU PyTorch (dev only) for the parity harness and its test; without it tests/test_parity.py skips.
$(VENV)/.parity: $(VENV)/.installed requirements-parity.txt
	$(PIP) install --quiet -r requirements-parity.txt
	touch $@

parity-deps: $(VENV)/.parity

# Real Fashion-MNIST from Debian's package (offline-friendly); elsewhere pass --data_dir.
fashion-mnist:
	@if [ ! -f $(FASHION) ]; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; \
	  else echo "Fashion-MNIST not found: put its four IDX files in a folder and pass --data_dir"; exit 1; fi; \
	fi

quickstart: venv fashion-mnist
	$(PY) -m ffsd_tf.run --flagfile=experiments/quickstart.flags

test: venv
	$(PY) -m pytest -q

# The README's "Use it from Python" section, against the installed package (CI runs it).
example: install fashion-mnist
	$(PY) examples/python_api.py

# The training step, the --dataset=folder cache, and held-out photos through serving_bytes (BENCHMARKS.md).
bench: venv
	$(PY) benchmarks/bench.py
	$(PY) benchmarks/bench.py --folder
	$(PY) benchmarks/bench.py --serving

# Step-by-step parity with the authors' trainer (float64, 200 steps each; see docs/parity.md).
parity: parity-deps
	$(PY) benchmarks/parity/parity.py --mode=single --steps=200 --resync
	$(PY) benchmarks/parity/parity.py --mode=ffsd --model=resnet8 --steps=200 --resync --batch=8

clean:
	rm -rf runs/quickstart runs/python_api
