"""Offline distillation from a fixed, trained teacher (Table II's KD and AT rows).

The KD and AT terms are checked against an independent NumPy computation, the teacher is
checked to be moved by nothing, and the CLI path (a teacher run, then a student run that loads
it) is exercised end to end.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from ffsd_tf.trainer import FFSD, FFSDConfig

from tests.conftest import TINY_COHORT as TINY
from tests.conftest import run_cli

from .test_cli import SMALL
from .test_trainer import batch, moved_by

NO_ONLINE = dict(leader=False, diversity="none", self_distillation="none")


@pytest.fixture(scope="module")
def kd_at_cohort():
    model = FFSD(FFSDConfig(num_students=2, teacher="resnet20", teacher_loss="kd_at", **TINY, **NO_ONLINE))
    model.set_epoch(1)
    return model


def np_log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def np_attention(f):
    a = (f.astype(np.float64) ** 2).mean(axis=-1).reshape(len(f), -1)
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def test_kd_and_at_terms_match_numpy(kd_at_cohort):
    model = kd_at_cohort
    images, labels = batch(np.random.default_rng(3))
    _, terms, _ = model.compute_losses(images, labels, training=False)
    teacher = model.teacher(images, training=False)
    zt, ft = teacher["logits"].numpy().astype(np.float64), [f.numpy() for f in teacher["features"]]
    t = model.config.temperature
    for i, student in enumerate(model.common_students):
        out = student(images, training=False)
        zs, fs = out["logits"].numpy().astype(np.float64), [f.numpy() for f in out["features"]]
        log_pt, log_ps = np_log_softmax(zt / t), np_log_softmax(zs / t)
        kd = t * t * np.mean(np.sum(np.exp(log_pt) * (log_pt - log_ps), axis=1))
        at = sum(np.mean((np_attention(a) - np_attention(b)) ** 2) for a, b in zip(fs, ft))
        assert len(fs) == 3  # every stage of the CIFAR ResNet is transferred
        np.testing.assert_allclose(float(terms[f"student{i + 1}/teacher_kd"]), kd, rtol=1e-4)
        np.testing.assert_allclose(float(terms[f"student{i + 1}/teacher_at"]), at, rtol=1e-4)
        assert kd > 0 and at > 0


@pytest.mark.parametrize("term", ["student1/teacher_kd", "student1/teacher_at", "student2/teacher_kd", "student2/teacher_at"])
def test_teacher_terms_move_only_their_student(kd_at_cohort, term):
    images, labels = batch(np.random.default_rng(4))
    assert moved_by(kd_at_cohort, term, images, labels) == {term.split("/")[0]}


def test_a_training_step_leaves_the_teacher_unchanged(kd_at_cohort):
    from ffsd_tf.optimizers import TorchSGD

    model = FFSD(FFSDConfig(num_students=1, teacher="resnet8", teacher_loss="kd_at", **TINY, **NO_ONLINE))
    model.compile({"students": TorchSGD(0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)})
    model.set_epoch(1)
    assert model.teacher.trainable_variables == [] and "teacher" in model.networks
    assert "teacher" not in [m.name for ms in model.role_models.values() for m in ms]
    before = [v.numpy().copy() for v in model.teacher.variables]
    student = [v.numpy().copy() for v in model.common_students[0].trainable_variables]
    model.train_step(batch(np.random.default_rng(5)))
    assert all(np.array_equal(b, v.numpy()) for b, v in zip(before, model.teacher.variables))  # BN stats too
    assert any(not np.array_equal(b, v.numpy()) for b, v in zip(student, model.common_students[0].trainable_variables))


def test_teacher_weights_enter_the_loss():
    """The KD term is zero exactly when the teacher equals the student (catches a teacher that is never used)."""
    model = FFSD(FFSDConfig(num_students=1, teacher="resnet8", **TINY, **NO_ONLINE))
    images, labels = batch(np.random.default_rng(6))
    _, terms, _ = model.compute_losses(images, labels, training=False)
    assert float(terms["student1/teacher_kd"]) > 1e-6
    model.teacher.set_weights(model.common_students[0].get_weights())
    _, terms, _ = model.compute_losses(images, labels, training=False)
    assert float(terms["student1/teacher_kd"]) == pytest.approx(0.0, abs=1e-6)


def test_impossible_teacher_configs_are_refused():
    with pytest.raises(ValueError, match="leader=False"):
        FFSDConfig(teacher="resnet20", **TINY)
    with pytest.raises(ValueError, match="teacher_loss"):
        FFSDConfig(teacher="resnet20", teacher_loss="fitnet", **TINY, **NO_ONLINE)
    with pytest.raises(ValueError, match="attention transfer needs"):  # VGG's maps are not the ResNet's sizes
        FFSD(FFSDConfig(teacher="vgg16", teacher_loss="at", model="resnet8", num_classes=10, input_shape=(32, 32, 3),
                        **NO_ONLINE))


# ------------------------------------------------------------------------------------ the CLI
BASELINE = ["--milestones=1", "--num_students=1", "--noleader", "--nomutual_learning", "--diversity=none", "--self_distillation=none"]


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("teacher") / "run")
    proc = run_cli(SMALL + BASELINE + ["--model=resnet20", "--epochs=2", f"--output_dir={out}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_student_run_distils_the_saved_teacher(teacher_run, tmp_path):
    out = str(tmp_path / "kd")
    proc = run_cli(SMALL + BASELINE + ["--epochs=2", f"--teacher_run={teacher_run}", "--teacher_loss=kd_at",
                                       f"--output_dir={out}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Teacher: resnet20 from {teacher_run}" in proc.stdout
    # The evaluated teacher is the saved one: its test accuracy equals the teacher run's own.
    theirs = json.load(open(os.path.join(teacher_run, "results.json")))["accuracy"]["student1"]["final"]
    ours = json.load(open(os.path.join(out, "results.json")))["accuracy"]
    assert ours["teacher"]["final"] == pytest.approx(theirs)
    assert "| Teacher (fixed) |" in open(os.path.join(out, "results.md")).read()
    history = json.load(open(os.path.join(out, "history.json")))
    assert history[-1]["student1/teacher_kd"] > 0 and history[-1]["student1/teacher_at"] > 0
    # The checkpoint carries the teacher: a restore needs no teacher run.
    from ffsd_tf import rundir

    restored, _, _ = rundir.restore_model(out)
    source, _, _ = rundir.restore_model(teacher_run)
    for a, b in zip(restored.teacher.variables, source.common_students[0].variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # The attention figures show the teacher beside the student (what AT distils).
    from ffsd_tf.visualize import cohort_attention

    names, maps = cohort_attention(restored, np.zeros((2, 16, 16, 3), np.float32))
    assert names == ["student1", "teacher"] and len(maps[1]) == len(maps[0]) == 3
    # And the report names the method.
    from ffsd_tf import report

    assert report.method_label(json.load(open(os.path.join(out, "config.json")))["model"]) == "KD + AT from resnet20"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--teacher_run=/nonexistent/run"], "/nonexistent/run is not a run directory"),
        (["--teacher_run={teacher}", "--leader"], "add --noleader"),
        (["--teacher_run={teacher}", "--synthetic_classes=5"], "classes"),
    ],
)
def test_bad_teacher_flags_fail_in_one_line(teacher_run, tmp_path, extra, message):
    out = tmp_path / "bad"
    args = [a.format(teacher=teacher_run) for a in extra]
    proc = run_cli(SMALL + BASELINE + ["--epochs=2", f"--output_dir={out}"] + args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not (out / "checkpoints").exists()


def test_attention_transfer_from_a_teacher_with_other_map_sizes_fails_in_one_line(tmp_path):
    data = ["--image_size=32", "--synthetic_train=64", "--synthetic_test=32"]
    teacher = str(tmp_path / "resnet18")
    proc = run_cli(SMALL + BASELINE + data + ["--model=resnet18", "--epochs=2", f"--output_dir={teacher}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "at"
    proc = run_cli(SMALL + BASELINE + data + ["--epochs=2", f"--teacher_run={teacher}", "--teacher_loss=at",
                                              f"--output_dir={out}"])
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "attention transfer needs" in lines[0] and "resnet18" in lines[0], proc.stderr
    assert not (out / "checkpoints").exists()
