"""Every experiment flagfile runs one training step of its own configuration at a tiny input size.

The flagfile is parsed as the CLI parses it; only the data is swapped for a tiny synthetic set
(so a flagfile with a wrong flag, an impossible combination or a network that cannot be built
fails CI), and the cohort is built and trained through the CLI's own code path.
"""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from ffsd_tf import flags as ffsd_flags
from ffsd_tf import run

FLAGS = flags.FLAGS
from tests.conftest import ROOT

FLAGFILES = sorted(os.path.relpath(f, ROOT) for f in glob.glob(f"{ROOT}/experiments/**/*.flags", recursive=True))
# Smallest input each family accepts (VGG and ImageNet ResNets halve five times).
TINY_SIZE = {"vgg16": 32, "resnet18": 32, "resnet34": 32}


def tiny_args(size):
    return ["--dataset=synthetic", f"--image_size={size}", "--batch_size=4", "--synthetic_classes=3",
            "--synthetic_train=8", "--synthetic_test=4"]


def tiny_bundle(size):
    from ffsd_tf.data import load_dataset

    return load_dataset("synthetic", batch_size=4, image_size=size, synthetic_classes=3, synthetic_train=8, synthetic_test=4)


def output_dir_of(flagfile):
    FLAGS.unparse_flags()
    FLAGS(["prog", f"--flagfile={flagfile}"])
    return FLAGS.output_dir


def tiny_teacher_run(teacher_run, size, tmp_path):
    """The run directory the flagfile that trains ``teacher_run`` would write, at the tiny size."""
    from ffsd_tf import rundir

    producers = [f for f in FLAGFILES if output_dir_of(f) == teacher_run]
    assert producers, f"no flagfile in experiments/ trains the teacher {teacher_run}"
    FLAGS.unparse_flags()
    FLAGS(["prog", f"--flagfile={producers[0]}"] + tiny_args(size))
    bundle = tiny_bundle(size)
    config = run.cohort_config(ffsd_flags.run_config(), bundle)
    out = str(tmp_path / "teacher")
    os.makedirs(out)
    run.write_run_files(out, config, bundle)
    tf.train.CheckpointManager(rundir.checkpoint_for(run.build_model(config, 2)), os.path.join(out, "checkpoints"), 1).save()
    return out


@pytest.mark.parametrize("flagfile", FLAGFILES)
def test_flagfile_runs_one_step(flagfile, monkeypatch, tmp_path):
    import keras

    from ffsd_tf import rundir

    monkeypatch.chdir(ROOT)
    FLAGS.unparse_flags()
    try:
        FLAGS(["prog", f"--flagfile={flagfile}"])
        ffsd_flags.validate()
        size = TINY_SIZE.get(FLAGS.model, 16)
        extra = []
        if FLAGS.teacher_run is not None:  # offline KD/AT: the teacher comes from its own flagfile's run
            extra = [f"--teacher_run={tiny_teacher_run(FLAGS.teacher_run, size, tmp_path)}"]
        FLAGS.unparse_flags()
        FLAGS(["prog", f"--flagfile={flagfile}"] + tiny_args(size) + extra)
        keras.utils.set_random_seed(0)
        bundle = tiny_bundle(size)
        model = run.build_model(run.cohort_config(ffsd_flags.run_config(), bundle), steps_per_epoch=2)
        if FLAGS.teacher_run is not None:
            rundir.load_teacher(model, FLAGS.teacher_run, "synthetic")
        model.set_epoch(1)
        images, labels = next(iter(bundle.train_stream(0)))
        net = model.leader or model.common_students[0]
        before = [v.numpy().copy() for v in net.trainable_variables]
        logs = model.train_step((images, labels))
        assert all(np.isfinite(float(v)) for v in logs.values()), logs
        assert len(model.common_students) == FLAGS.num_students
        assert any(not np.array_equal(b, v.numpy()) for b, v in zip(before, net.trainable_variables))
    finally:
        FLAGS.unparse_flags()


def test_cifar_r32_flagfile_trains_offline_on_a_cifar100_npz(tmp_path):
    """The paper's CIFAR-100 entry point with the rebuilt file (../shared/data/cifar100, here a tiny file
    of its shape): ``--flagfile=experiments/cifar_r32.flags --data_dir=<cifar100.npz>`` trains the
    flagfile's cohort (ResNet-32, 2 students + leader, 100 classes) from the file, with no download
    (tensorflow-datasets' folder is pointed at a path that must stay absent); only the budget is
    shrunk (1 epoch of 8 images)."""
    import json

    from tests.conftest import child_env, run_cli

    rng = np.random.default_rng(0)
    path = tmp_path / "cifar100.npz"
    np.savez(path, x_train=rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), y_train=np.arange(8) * 12,
             x_test=rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8), y_test=np.arange(4) * 25)
    out, no_tfds = tmp_path / "run", tmp_path / "no_tfds"
    proc = run_cli(["--flagfile=experiments/cifar_r32.flags", f"--data_dir={path}", "--epochs=1", "--milestones=",
                    "--batch_size=4", f"--output_dir={out}", "--verbose=quiet"],
                   env=child_env(TFDS_DATA_DIR=str(no_tfds)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = json.loads((out / "config.json").read_text())
    assert (config["data"]["dataset"], config["model"]["model"], config["model"]["num_students"]) == ("cifar100", "resnet32", 2)
    assert config["dataset"]["num_classes"] == 100 and config["data"]["data_dir"] == str(path)
    results = json.loads((out / "results.json").read_text())
    assert set(results["accuracy"]) >= {"student1", "student2", "fusion", "leader"}
    assert not no_tfds.exists()
