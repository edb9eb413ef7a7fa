"""Every experiment flagfile runs one training step of its own configuration at a tiny input size.

The flagfile is parsed as the CLI parses it; only the data is swapped for a tiny synthetic set
(so a flagfile with a wrong flag, an impossible combination or a network that cannot be built
fails CI), and the cohort is built and trained through the CLI's own code path.
"""

import glob
import os

import numpy as np
import pytest
from absl import flags

from ffsd_tf import flags as ffsd_flags
from ffsd_tf import run

FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGFILES = sorted(os.path.relpath(f, ROOT) for f in glob.glob(f"{ROOT}/experiments/**/*.flags", recursive=True))
# Smallest input each family accepts (VGG and ImageNet ResNets halve five times).
TINY_SIZE = {"vgg16": 32, "resnet18": 32, "resnet34": 32}


@pytest.mark.parametrize("flagfile", FLAGFILES)
def test_flagfile_runs_one_step(flagfile, monkeypatch):
    import keras

    from ffsd_tf.data import load_dataset

    monkeypatch.chdir(ROOT)
    FLAGS.unparse_flags()
    try:
        FLAGS(["prog", f"--flagfile={flagfile}"])
        ffsd_flags.validate()
        size = TINY_SIZE.get(FLAGS.model, 16)
        FLAGS(["prog", f"--flagfile={flagfile}", "--dataset=synthetic", f"--image_size={size}", "--batch_size=4",
               "--synthetic_classes=3", "--synthetic_train=8", "--synthetic_test=4"])
        keras.utils.set_random_seed(0)
        bundle = load_dataset("synthetic", batch_size=4, image_size=size, synthetic_classes=3,
                              synthetic_train=8, synthetic_test=4)
        model = run.build_model(run.config_from_flags(bundle), steps_per_epoch=2)
        model.set_epoch(1)
        images, labels = next(iter(bundle.train_stream(0)))
        before = [v.numpy().copy() for v in model.leader.trainable_variables] if model.leader else None
        logs = model.train_step((images, labels))
        assert all(np.isfinite(float(v)) for v in logs.values()), logs
        assert len(model.common_students) == FLAGS.num_students
        if before is not None:
            assert any(not np.array_equal(b, v.numpy()) for b, v in zip(before, model.leader.trainable_variables))
    finally:
        FLAGS.unparse_flags()
