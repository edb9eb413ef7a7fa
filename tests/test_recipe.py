"""The robust recipe (experiments/recipes/robust.flags): it parses, every loss weight follows its
schedule, epoch by epoch, through the CLI's own flag-to-schedule path, it masks the leader's KL as
the Python API's default does, and without the mutual KL
common student 1 trains exactly as the network alone."""

import json
import math
import os

import numpy as np
import pytest
from absl import flags

from ffsd_tf import flags as ffsd_flags
from ffsd_tf.trainer import LOSS_WEIGHTS
from tests.conftest import ROOT, SYNTHETIC, run_cli

FLAGS = flags.FLAGS
RECIPE = os.path.join(ROOT, "experiments", "recipes", "robust.flags")


def warm(epoch, length=5):
    return math.exp(-5 * (1 - epoch / length) ** 2) if epoch < length else 1.0


# name -> value at the 1-based epoch, as the recipe states it.
EXPECTED = {
    "kl": lambda e: 0.0,  # no mutual KL between the common students
    "fusion_kl": lambda e: 1.0 * warm(e),
    "leader_kl": lambda e: 1.0 * warm(e),
    "diversity": lambda e: 1e-5 * warm(e),
    "fusion": lambda e: 10.0 * warm(e),
    "self_distillation": lambda e: 1000.0 * warm(e),
    "teacher_kd": lambda e: 1.0,
    "teacher_at": lambda e: 500.0,
}


@pytest.fixture
def recipe_flags():
    FLAGS.unparse_flags()
    FLAGS(["prog", f"--flagfile={RECIPE}", "--dataset=synthetic", "--model=resnet8", "--epochs=8", "--milestones=6"])
    yield
    FLAGS.unparse_flags()


def test_recipe_parses_and_validates(recipe_flags):
    ffsd_flags.validate()
    assert FLAGS.partial_batch == "drop_small"


@pytest.mark.parametrize("epoch", [1, 2, 3, 4, 5, 6, 8])
def test_every_weight_follows_its_schedule(recipe_flags, epoch):
    schedules = ffsd_flags.weight_schedules()
    assert set(schedules) == set(LOSS_WEIGHTS)
    for name, want in EXPECTED.items():
        assert schedules[name](epoch) == pytest.approx(want(epoch), rel=1e-12), name


def test_the_recipe_drops_the_mutual_kl_and_warms_up_the_others_the_paper_does_not():
    """The paper's flagfiles keep the KL terms constant from step 1 (the authors' code)."""
    FLAGS.unparse_flags()
    FLAGS(["prog", f"--flagfile={os.path.join(ROOT, 'experiments', 'paper', 'table1_resnet32_ffsd.flags')}"])
    paper = ffsd_flags.weight_schedules()
    FLAGS.unparse_flags()
    assert paper["kl"](1) == paper["fusion_kl"](1) == paper["leader_kl"](1) == 1.0
    FLAGS(["prog", f"--flagfile={RECIPE}"])
    recipe = ffsd_flags.weight_schedules()
    FLAGS.unparse_flags()
    assert recipe["fusion_kl"](1) == recipe["leader_kl"](1) == pytest.approx(math.exp(-3.2))
    assert recipe["fusion_kl"](5) == recipe["leader_kl"](5) == 1.0
    assert [recipe["kl"](e) for e in (1, 5, 30)] == [0.0, 0.0, 0.0]
    assert paper["kl"](30) == 1.0


@pytest.mark.parametrize("epoch", [1, 2, 3, 5, 9])
def test_the_flagfile_and_the_python_api_default_are_one_recipe(recipe_flags, epoch):
    """robust.flags (CLI) and RECIPE_LOSS_WEIGHTS (FFSD's default) give the same weight every epoch."""
    from ffsd_tf.trainer import loss_weight_schedules

    cli, api = ffsd_flags.weight_schedules(), loss_weight_schedules(base="recipe")
    for name in LOSS_WEIGHTS:
        assert cli[name](epoch) == api[name](epoch), name


def test_the_flagfile_and_the_python_api_share_the_recipes_cohort_options(recipe_flags):
    """robust.flags sets every RECIPE_OPTIONS field (the leader's teacher-correct KL mask) to the
    value FFSD gives it by default (and --loss_weights' default set does); the paper's flagfiles
    state --loss_weights=paper, whose mask is none."""
    from ffsd_tf.recipes import RECIPE_OPTIONS

    assert RECIPE_OPTIONS == {"leader_kl_mask": "teacher_correct"}
    for key, value in RECIPE_OPTIONS.items():
        assert getattr(FLAGS, key) == value
        assert FLAGS[key].default is None  # filled by --loss_weights
    FLAGS.unparse_flags()
    FLAGS(["prog", "--model=resnet8"])  # no weight flag: the default set, the recipe
    assert all(getattr(ffsd_flags.run_config().cohort, key) == value for key, value in RECIPE_OPTIONS.items())
    FLAGS.unparse_flags()
    FLAGS(["prog", f"--flagfile={os.path.join(ROOT, 'experiments', 'paper', 'table1_resnet32_ffsd.flags')}"])
    assert all(getattr(ffsd_flags.run_config().cohort, key) == "none" for key in RECIPE_OPTIONS)


def test_with_the_recipe_common_student_1_trains_as_the_network_alone(tmp_path):
    """No mutual KL: student 1 gets no signal from the cohort (the diversity term acts on students
    2..n, the decoders' and the leader's terms never reach it), so from the same seed it takes the
    CE baseline's steps: the same losses and accuracies, epoch by epoch (RESULTS.md, "The recipe").
    Fails if any cohort term leaks into student 1 (e.g. the recipe's mutual KL back at 1)."""
    small = [*SYNTHETIC, "--epochs=2", "--milestones=", "--verbose=quiet", "--seed=3", "--deterministic"]
    ce = ["--num_students=1", "--noleader", "--nomutual_learning", "--diversity=none", "--self_distillation=none"]
    runs = {"ce": ce, "ffsd": [f"--flagfile={RECIPE}", "--num_students=2"]}
    history = {}
    for name, extra in runs.items():
        proc = run_cli([*extra, *small, f"--output_dir={tmp_path / name}"])
        assert proc.returncode == 0, proc.stderr[-2000:]
        history[name] = json.loads((tmp_path / name / "history.json").read_text())
    for key in ("student1/ce", "student1/acc", "val_student1/acc", "val_student1/loss"):
        alone = [h[key] for h in history["ce"]]
        in_cohort = [h[key] for h in history["ffsd"]]
        np.testing.assert_allclose(in_cohort, alone, rtol=1e-5, err_msg=key)
