"""Step-by-step parity with the authors' PyTorch trainer (``benchmarks/parity``; needs CPU torch).

Both sides run in float64 from the same weights and batches (crop/flip parameters applied by each
side's own augmentation). ``resync`` copies torch's whole state into ours after every step, so each
step is compared from identical state: the loss, every gradient, every weight and BatchNorm running
statistic and every optimizer slot must agree to 1e-9 relative — float64 round-off, where any real
difference in a formula shows as 1e-6 or more (the biased running variance Keras uses showed as 1e-4).
The free-running check follows both trajectories with no resync for as long as the dynamics do not
amplify round-off past the tolerance at this learning rate (docs/parity.md).
"""

import os
import sys

import pytest

torch = pytest.importorskip("torch", reason="CPU torch is not installed (pip install -r requirements-parity.txt)")
# One torch thread: the reference's float64 ops on batches of 8-32 gain nothing from more, and its
# OpenMP workers spin against TensorFlow's threads in the same process (on 2 busy cores a step took
# 2-3x longer with torch's default of one thread per core). Numerics are unchanged within round-off.
torch.set_num_threads(1)

from tests.conftest import ROOT  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "benchmarks", "parity"))

import parity  # noqa: E402


@pytest.fixture(autouse=True)
def float64_then_back():
    import keras

    policy = keras.config.dtype_policy()
    yield
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy(policy)
    torch.set_default_dtype(torch.float32)


def check(mode, steps, batch, tolerance, resync, **kw):
    lines = []
    worst, name, first_bad = parity.run(mode=mode, model="resnet8", steps=steps, batch=batch, tolerance=tolerance,
                                        resync=resync, report_every=10**9, out=lines.append, **kw)
    assert first_bad is None, f"{name}: {worst:.3g} > {tolerance:g}\n" + "\n".join(lines)
    return worst


def test_one_network_every_step_from_identical_state():
    check("single", steps=12, batch=16, tolerance=1e-9, resync=True, steps_per_epoch=4, milestones=(1, 2))


def test_the_whole_ffsd_cohort_every_step_from_identical_state():
    """Students, leader + sigma, fusion and decoders, their four optimizers, at the paper's weights."""
    check("ffsd", steps=8, batch=8, tolerance=1e-9, resync=True, steps_per_epoch=3, milestones=(1, 2))


def test_free_running_trajectories_agree():
    check("single", steps=30, batch=32, tolerance=1e-4, resync=False, lr=0.01, steps_per_epoch=100, milestones=(100,))
