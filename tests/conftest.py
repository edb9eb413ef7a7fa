"""Shared test setup: quiet TensorFlow, small thread pools, deterministic seeds, and the helpers
several test files use (import them: ``from tests.conftest import ROOT, run_cli, SYNTHETIC``).

* ``ROOT``: the repository root (subprocesses run there, with it on PYTHONPATH: ``child_env``).
* ``TINY_COHORT``: FFSDConfig arguments of the smallest cohort the unit tests build.
* Flag lists of CLI runs on the ``synthetic`` dataset: ``SYNTHETIC`` (4 classes, 256 / 128 images
  at 16x16, ResNet-8, batch 32) and ``SYNTHETIC_8PX`` (10 classes, 96 / 32 images at 8x8, batch 16);
  each test adds its epochs, milestones and progress display.
* ``run_module`` / ``run_cli``: ``python -m <module> ARGS`` in a subprocess (``run_cli``: the trainer).
"""
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_COHORT = dict(model="resnet8", num_classes=10, input_shape=(16, 16, 3))

SYNTHETIC = [
    "--dataset=synthetic",
    "--synthetic_classes=4",
    "--synthetic_train=256",
    "--synthetic_test=128",
    "--image_size=16",
    "--model=resnet8",
    "--batch_size=32",
]
SYNTHETIC_8PX = [
    "--dataset=synthetic",
    "--model=resnet8",
    "--synthetic_train=96",
    "--synthetic_test=32",
    "--image_size=8",
    "--batch_size=16",
]


def child_env(**extra) -> dict:
    """The environment of a subprocess: this checkout first on the path, TensorFlow's C++ logs off."""
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ROOT, **extra}


def run_module(module: str, args, timeout=300, env=None, **kw) -> subprocess.CompletedProcess:
    """``python -m module *args`` from the repository root, output captured as text."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env or child_env(),
                          capture_output=True, text=True, timeout=timeout, **kw)


def run_cli(args, timeout=300, **kw) -> subprocess.CompletedProcess:
    """``python -m ffsd_tf.run *args`` (the training CLI)."""
    return run_module("ffsd_tf.run", args, timeout=timeout, **kw)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def parsed():
    """``parsed(*argv)``: the training flags parsed from ``argv`` (absl's global FLAGS), reset afterwards."""
    from absl import flags

    from ffsd_tf import flags as ffsd_flags  # noqa: F401  (defines the flags)

    def parse(*argv):
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["prog", *argv])
        return flags.FLAGS

    yield parse
    flags.FLAGS.unparse_flags()
