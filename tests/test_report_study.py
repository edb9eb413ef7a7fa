"""The report for the budget study (issue 14): the paper's and the recipe's FFSD are different rows,
each named by its loss-weight set; the leader's gain over CE and over DML; wall time and train acc.

Four real runs (ResNet-8, a small synthetic task, 2 epochs, seed 1): CE, DML with its KL
warm-up, FFSD with the paper's weights and FFSD with the recipe (its weights and leader KL mask). Expected values are recomputed
from each run's own results.json and history.json.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ffsd_tf.report import method_with_weights
from tests.conftest import ROOT, child_env

SMALL = ["--dataset=synthetic", "--synthetic_classes=4", "--synthetic_train=128", "--synthetic_test=64",
         "--image_size=16", "--model=resnet8", "--batch_size=32", "--milestones=", "--epochs=2",
         "--verbose=quiet", "--seed=1"]
METHODS = {  # as experiments/budget_study/methods/
    "ce": ["--num_students=1", "--noleader", "--nomutual_learning", "--diversity=none", "--self_distillation=none",
           "--loss_weights=paper"],
    "dml": ["--noleader", "--diversity=none", "--self_distillation=none", "--loss_weights=paper",
            "--lambda_kl_schedule=exp_warmup:5"],
    "ffsd_paper": ["--loss_weights=paper"],
    "ffsd_recipe": [f"--flagfile={ROOT}/experiments/recipes/robust.flags"],
}
ENV = child_env()


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    base = tmp_path_factory.mktemp("study")
    dirs = {m: str(base / m) for m in METHODS}
    # Two at a time, as in test_report.py: each run is mostly a single-threaded process start.
    names = list(METHODS)
    for pair in (names[:2], names[2:]):
        procs = {m: subprocess.Popen([sys.executable, "-m", "ffsd_tf.run", *METHODS[m], *SMALL,
                                      f"--output_dir={dirs[m]}"], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
                 for m in pair}
        for m, p in procs.items():
            _, err = p.communicate(timeout=600)
            assert p.returncode == 0, f"{m}: {err[-2000:]}"
    proc = subprocess.run([sys.executable, "-m", "ffsd_tf.report", dirs["dml"], dirs["ffsd_paper"], dirs["ffsd_recipe"],
                           f"--baseline={dirs['ce']}", "--format=json"], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return dirs, {g["method"]: g for g in json.loads(proc.stdout)["groups"]}


def load(run_dir, name):
    with open(os.path.join(run_dir, name)) as f:
        return json.load(f)


def test_each_weight_set_is_its_own_row_named_by_its_set(study):
    _, groups = study
    assert sorted(groups) == ["CE baseline", "DML (KL warm-up)", "FFSD", "FFSD (recipe)"]
    assert all(g["num_runs"] == 1 and not g["notes"] for g in groups.values())


def test_the_leader_gains_over_ce_and_over_dml(study):
    dirs, groups = study
    acc = {m: load(d, "results.json")["accuracy"] for m, d in dirs.items()}
    dml_mean = np.mean([acc["dml"]["student1"]["final"], acc["dml"]["student2"]["final"]])
    for method, run in (("FFSD", "ffsd_paper"), ("FFSD (recipe)", "ffsd_recipe")):
        g = groups[method]
        leader = acc[run]["leader"]["final"]
        assert g["gain"]["final"]["mean"] == pytest.approx(leader - acc["ce"]["student1"]["final"], abs=1e-12)
        assert g["gain_dml"]["final"]["mean"] == pytest.approx(leader - dml_mean, abs=1e-12)
        assert g["gain_dml"]["baseline_group"] == groups["DML (KL warm-up)"]["id"]
    assert groups["DML (KL warm-up)"]["gain_dml"] is None and groups["CE baseline"]["gain_dml"] is None


def test_wall_time_and_train_accuracy_come_from_the_runs(study):
    dirs, groups = study
    for method, run, model in (("FFSD (recipe)", "ffsd_recipe", "leader"), ("CE baseline", "ce", "student1")):
        g = groups[method]
        seconds = load(dirs[run], "results.json")["train_seconds"]
        history = load(dirs[run], "history.json")
        assert seconds == pytest.approx(sum(h["seconds"] for h in history), abs=0.06) and seconds > 0
        assert g["train_seconds"]["values"] == [seconds]
        cpu = load(dirs[run], "results.json")["train_cpu_seconds"]
        assert cpu == pytest.approx(sum(h["cpu_seconds"] for h in history), abs=0.06) and cpu > 0
        assert g["train_cpu_seconds"]["values"] == [cpu]
        assert g["train_acc"]["values"] == [history[-1][f"{model}/acc"]]


def test_the_markdown_summary_has_both_gains(study):
    dirs, _ = study
    proc = subprocess.run([sys.executable, "-m", "ffsd_tf.report", dirs["dml"], dirs["ffsd_recipe"],
                           f"--baseline={dirs['ce']}"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = proc.stdout.split("## Summary", 1)[1]
    row = next(line for line in summary.splitlines() if "FFSD (recipe)" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[-2].startswith(("+", "-")) and cells[-1].startswith(("+", "-"))  # gain vs CE, gain vs DML


RECIPE_WEIGHTS = {"lambda_kl": "0", "lambda_fusion_kl_schedule": "exp_warmup:5", "lambda_leader_kl_schedule": "exp_warmup:5"}


@pytest.mark.parametrize("flags,mask,label", [
    ({}, "none", "FFSD"),
    (RECIPE_WEIGHTS, "teacher_correct", "FFSD (recipe)"),
    ({**RECIPE_WEIGHTS, "lambda_kl_schedule": "exp_warmup:5"}, "teacher_correct",
     "FFSD (recipe)"),  # a weight of 0 has no schedule
    (RECIPE_WEIGHTS, "none", "FFSD (recipe weights, leader KL unmasked)"),  # the recipe before the mask
    ({}, "teacher_correct", "FFSD + teacher-correct leader KL"),
    ({"lambda_kl_schedule": "exp_warmup:5", "lambda_fusion_kl_schedule": "exp_warmup:5",
      "lambda_leader_kl_schedule": "exp_warmup:5"}, "none", "FFSD (KL warm-up)"),
    ({"lambda_kl_schedule": "exp_warmup:5"}, "none", "FFSD (custom loss weights)"),
    ({"lambda_kl": "0"}, "teacher_correct", "FFSD + teacher-correct leader KL (custom loss weights)"),
    ({"lambda_fusion": "3"}, "none", "FFSD (custom loss weights)"),
])
def test_method_names_its_loss_weight_set(flags, mask, label):
    model = {"model": "resnet8", "num_students": 2, "leader": True, "fusion": True, "mutual_learning": True,
             "diversity": "attention", "self_distillation": "both", "leader_kl_mask": mask}
    assert method_with_weights({"model": model, "flags": flags}) == label
    ce = {**model, "num_students": 1, "leader": False, "mutual_learning": False, "diversity": "none",
          "leader_kl_mask": "none"}
    assert method_with_weights({"model": ce, "flags": flags}) == "CE baseline"  # no loss weight: no suffix
    dml = {**ce, "num_students": 2, "mutual_learning": True}
    if flags == RECIPE_WEIGHTS:  # no leader, so no mask: the recipe's weights are the recipe
        assert method_with_weights({"model": dml, "flags": flags}) == "DML (recipe)"


@pytest.mark.parametrize("extra, label", [
    ({"ema_decay": 0.995, "ema_teacher": True}, "FFSD + EMA teacher (EMA 0.995) (recipe)"),
    ({"ema_decay": 0.995}, "FFSD (EMA 0.995) (recipe)"),
    ({"ema_decay": 0.0, "ema_teacher": False}, "FFSD (recipe)"),
])
def test_a_run_with_weight_averages_is_its_own_method(extra, label):
    """--ema_decay / --ema_teacher runs are named (and so grouped) apart from the plain recipe, and a
    CE run with an average apart from plain CE."""
    model = {"model": "resnet8", "num_students": 2, "leader": True, "fusion": True, "mutual_learning": True,
             "diversity": "attention", "self_distillation": "both", "leader_kl_mask": "teacher_correct", **extra}
    assert method_with_weights({"model": model, "flags": RECIPE_WEIGHTS}) == label
    ce = {**model, "num_students": 1, "leader": False, "mutual_learning": False, "diversity": "none",
          "leader_kl_mask": "none", "ema_teacher": False}
    assert method_with_weights({"model": ce, "flags": {}}) == (
        f"CE baseline (EMA {extra['ema_decay']:g})" if extra["ema_decay"] else "CE baseline")
