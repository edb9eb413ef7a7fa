# ffsd-tf: `make quickstart` trains on real Fashion-MNIST offline; `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: venv fashion-mnist quickstart test bench clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

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

bench: venv
	$(PY) benchmarks/bench.py

clean:
	rm -rf runs/quickstart
