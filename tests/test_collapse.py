"""The early KL blow-up is reported (issue 14): one warning line naming the cause and the fix.

A cohort whose mutual KL explodes in the first steps (here forced with --lambda_kl=30 on a tiny
synthetic set) ends epoch 1 with its students at chance; a healthy cohort on the same data
(--lambda_kl=1) must stay silent, and so must a cohort without the mutual KL (the recipe's
--lambda_kl=0) that a far too large learning rate leaves at chance: its KL is large but moved nothing.

The callback on its own (issue 29), fed epoch-1 logs: "at chance" is every common student's train
accuracy below 1.5 / C and its cross-entropy within 10 % of ln C; the line reports each student's
accuracy against chance and its cross-entropy against ln C, and a student well above chance in
accuracy keeps it quiet even with a cross-entropy near ln C.
"""

import io
import math

import pytest

from ffsd_tf.progress import CollapseWarning
from tests.conftest import run_cli

COHORT = ["--dataset=synthetic", "--model=resnet8", "--synthetic_train=640", "--synthetic_test=32",
          "--image_size=8", "--batch_size=32", "--epochs=1", "--milestones=", "--verbose=quiet"]
WARNING = "warning: the mutual KL blew up in epoch 1"


@pytest.mark.parametrize("lambda_kl, lr, warns", [("30", "0.1", True), ("1", "0.1", False), ("0", "5", False)])
def test_collapse_warning_fires_only_on_a_blow_up(tmp_path, lambda_kl, lr, warns):
    proc = run_cli(COHORT + [f"--lambda_kl={lambda_kl}", f"--lr={lr}", f"--output_dir={tmp_path / 'run'}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith(WARNING)]
    if warns:
        assert len(lines) == 1
        assert "--lambda_kl=0" in lines[0] and "--loss_weights=recipe" in lines[0] and "ln 10 = 2.30" in lines[0]
        assert "--lambda_kl_schedule=exp_warmup:5" in lines[0]
    else:
        assert lines == []


@pytest.fixture(scope="module")
def cohort():
    """A real 2-student cohort on 4 classes, at epoch 1 of the paper's weights (mutual KL weight 1)."""
    from ffsd_tf.trainer import FFSD

    model = FFSD("resnet8", num_classes=4, input_shape=(8, 8, 3), loss_weights="paper", leader=False,
                 diversity="none", self_distillation="none")
    model.set_epoch(1)
    return model


def epoch_one(model, accuracies, ces, peak_kl=5.0) -> str:
    """The warning's output after one epoch of 2 steps whose second step had a T^2 KL of ``peak_kl``."""
    stream = io.StringIO()
    warning = CollapseWarning(stream=stream)
    warning.set_model(model)
    warning.on_epoch_begin(0)
    warning.on_train_batch_end(0, {"student1/kl": 0.1})
    warning.on_train_batch_end(1, {"student1/kl": (0.1 + peak_kl) / 2})  # running mean over the 2 steps
    logs = {}
    for i, (acc, ce) in enumerate(zip(accuracies, ces)):
        logs.update({f"student{i + 1}/acc": acc, f"student{i + 1}/ce": ce})
    warning.on_epoch_end(0, logs)
    return stream.getvalue()


def test_fires_on_a_collapsed_cohort_and_reports_what_it_measured(cohort):
    text = epoch_one(cohort, [0.26, 0.24], [1.385, 1.39])
    assert text.count("\n") == 1 and text.startswith(WARNING)
    assert "T^2 KL reached 5.0 > ln 4 = 1.39" in text
    assert "student1 train accuracy 26.0 % (chance 25.0 %), cross-entropy 1.39 (ln 4 = 1.39)" in text
    assert "student2 train accuracy 24.0 % (chance 25.0 %), cross-entropy 1.39" in text


@pytest.mark.parametrize("accuracies, ces, peak_kl", [
    ([0.426, 0.25], [1.36, 1.39], 5.0),  # student 1 well above chance (42.6 % on 4 classes), CE near ln 4
    ([0.25, 0.25], [1.0, 1.39], 5.0),  # student 1's cross-entropy far below ln 4
    ([0.25, 0.25], [1.39, 1.39], 1.2),  # at chance, but no step's KL exceeded ln 4: no blow-up
])
def test_stays_quiet_unless_every_student_is_at_chance_after_a_blow_up(cohort, accuracies, ces, peak_kl):
    assert epoch_one(cohort, accuracies, ces, peak_kl) == ""


def test_the_accuracy_bound_is_one_and_a_half_times_chance(cohort):
    just_below, just_above = 1.5 / 4 - 0.001, 1.5 / 4 + 0.001
    assert epoch_one(cohort, [just_below, 0.25], [math.log(4)] * 2) != ""
    assert epoch_one(cohort, [just_above, 0.25], [math.log(4)] * 2) == ""
