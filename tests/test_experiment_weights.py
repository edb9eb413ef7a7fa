"""--loss_weights (issue 29): one set of user defaults on the command line, the paper kept exactly.

* No flag: the recipe (``RECIPE_LOSS_WEIGHTS`` and, with a leader, ``RECIPE_OPTIONS``), the Python
  API's default; ``--loss_weights=paper`` / ``kl_warmup`` the other named sets; a ``--lambda_*`` or
  ``--leader_kl_mask`` flag given overrides the set.
* Every paper flagfile (experiments/paper/, cifar_r32, imagenet_r18/34) trains exactly the paper's
  weights, schedules and unmasked leader KL, through the real flag parser and RunConfig.
* Every other flagfile keeps what it trained before the flag existed, when the flag defaults were
  the paper's: the paper's set with the ``--lambda_*`` / ``--leader_kl_mask`` lines it states over
  it, or the recipe for those that include experiments/recipes/robust.flags (which states all of it).
  The budget study's settings files are left out: they state no weight and run only with a method file.
* flags.txt states the weights the set filled, and a config.json without the set (written before
  it) still loads, as the paper's set.
"""

import glob
import json
import os

import pytest

from ffsd_tf import config as run_config
from ffsd_tf.recipes import (KL_WARMUP_LOSS_WEIGHTS, NAMED_LOSS_WEIGHTS, PAPER_LOSS_WEIGHTS, RECIPE_LOSS_WEIGHTS,
                             RECIPE_OPTIONS)
from tests.conftest import ROOT

EXPERIMENTS = os.path.join(ROOT, "experiments")
PAPER_FLAGFILES = sorted(glob.glob(f"{EXPERIMENTS}/paper/*.flags")) + [
    f"{EXPERIMENTS}/{name}.flags" for name in ("cifar_r32", "imagenet_r18", "imagenet_r34")]
ALL_FLAGFILES = sorted(f for f in glob.glob(f"{EXPERIMENTS}/**/*.flags", recursive=True)
                       if "/budget_study/settings/" not in f)
def rel(path):
    return os.path.relpath(path, ROOT)


def effective(parsed, *argv):
    """(name -> (value, schedule) of every loss weight, leader_kl_mask, partial_batch) of a command line."""
    from ffsd_tf import flags as ffsd_flags

    parsed(*argv)
    c = ffsd_flags.run_config()
    weights = {k: (c.loss_weights.values[k], c.loss_weights.schedules[k]) for k in c.loss_weights.values}
    return weights, c.cohort.leader_kl_mask, c.data.partial_batch


def stated_lines(path) -> list[str]:
    """A flagfile's lines with the ones of the flagfiles it includes in place (absl's order)."""
    out = []
    for line in open(path, encoding="utf-8").read().splitlines():
        line = line.strip()
        if line.startswith("--flagfile="):
            out += stated_lines(os.path.join(ROOT, line.split("=", 1)[1]))
        elif line and not line.startswith("#"):
            out.append(line)
    return out


def before_the_flag(path):
    """What a flagfile trained when every flag default was the paper's: the paper's set (or the set
    its ``--loss_weights`` line names, which it stated line by line before) with the weight lines it
    states over it. robust.flags states every weight, so the files that include it train the recipe."""
    lines = stated_lines(path)
    names = [line.split("=", 1)[1] for line in lines if line.startswith("--loss_weights=")]
    weights = dict(NAMED_LOSS_WEIGHTS[names[-1] if names else "paper"])
    mask = "none"
    for line in lines:
        name, _, value = line[2:].partition("=")
        if name.startswith("lambda_") and name.endswith("_schedule"):
            key = name[len("lambda_"):-len("_schedule")]
            weights[key] = (weights[key][0], value)
        elif name.startswith("lambda_"):
            key = name[len("lambda_"):]
            weights[key] = (float(value), weights[key][1])
        elif name == "leader_kl_mask":
            mask = value
    return weights, mask


@pytest.fixture
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # flagfiles include each other by paths relative to the repository root


def test_the_default_is_the_recipe_the_python_apis(parsed):
    weights, mask, partial = effective(parsed)
    assert weights == RECIPE_LOSS_WEIGHTS and mask == RECIPE_OPTIONS["leader_kl_mask"] and partial == "drop_small"
    weights, mask, _ = effective(parsed, "--noleader", "--diversity=none", "--self_distillation=none")
    assert weights == RECIPE_LOSS_WEIGHTS and mask == "none"  # the mask needs a leader


@pytest.mark.parametrize("name, expected", [("paper", PAPER_LOSS_WEIGHTS), ("kl_warmup", KL_WARMUP_LOSS_WEIGHTS),
                                            ("recipe", RECIPE_LOSS_WEIGHTS)])
def test_a_named_set_fills_every_weight(parsed, name, expected):
    weights, mask, _ = effective(parsed, f"--loss_weights={name}")
    assert weights == expected
    assert mask == ("teacher_correct" if name == "recipe" else "none")


def test_a_given_flag_overrides_the_set(parsed):
    weights, mask, _ = effective(parsed, "--lambda_kl=0.5", "--lambda_fusion_schedule=linear_warmup:3",
                                 "--leader_kl_mask=none")
    assert weights == {**RECIPE_LOSS_WEIGHTS, "kl": (0.5, "constant"), "fusion": (10.0, "linear_warmup:3")}
    assert mask == "none"
    weights, mask, _ = effective(parsed, "--lambda_kl_schedule=exp_warmup:5", "--loss_weights=paper",
                                 "--leader_kl_mask=teacher_correct")
    assert weights == {**PAPER_LOSS_WEIGHTS, "kl": (1.0, "exp_warmup:5")} and mask == "teacher_correct"


@pytest.mark.parametrize("flagfile", [rel(f) for f in PAPER_FLAGFILES])
def test_every_paper_flagfile_trains_exactly_the_paper(parsed, at_root, flagfile):
    weights, mask, partial = effective(parsed, f"--flagfile={flagfile}")
    assert weights == PAPER_LOSS_WEIGHTS
    assert mask == "none" and partial == "keep"  # Eq. 14 on every sample; the authors' DataLoader


@pytest.mark.parametrize("flagfile", [rel(f) for f in ALL_FLAGFILES])
def test_every_flagfile_trains_what_it_trained_before_the_flag(parsed, at_root, flagfile):
    weights, mask, _ = effective(parsed, f"--flagfile={flagfile}")
    want_weights, want_mask = before_the_flag(os.path.join(ROOT, flagfile))
    assert weights == want_weights
    assert mask == want_mask


@pytest.mark.parametrize("method, weights, mask", [
    ("ffsd_paper", PAPER_LOSS_WEIGHTS, "none"),
    ("ffsd_recipe", RECIPE_LOSS_WEIGHTS, "teacher_correct"),
    ("ffsd_recipe_unmasked", RECIPE_LOSS_WEIGHTS, "none"),
    ("ffsd_kl_warmup", KL_WARMUP_LOSS_WEIGHTS, "none"),
    ("dml", {**PAPER_LOSS_WEIGHTS, "kl": (1.0, "exp_warmup:5")}, "none"),
    ("ce", PAPER_LOSS_WEIGHTS, "none"),
    ("ce_ema", PAPER_LOSS_WEIGHTS, "none"),
    ("ffsd_recipe_ema_teacher", RECIPE_LOSS_WEIGHTS, "teacher_correct"),
    ("ffsd_recipe_n1", RECIPE_LOSS_WEIGHTS, "teacher_correct"),
    ("ffsd_recipe_n3", RECIPE_LOSS_WEIGHTS, "teacher_correct"),
    ("ffsd_recipe_nosd", RECIPE_LOSS_WEIGHTS, "teacher_correct"),
    ("ffsd_recipe_leader_kl4", {**RECIPE_LOSS_WEIGHTS, "leader_kl": (4.0, "exp_warmup:5")}, "teacher_correct"),
])
def test_the_budget_study_methods_keep_their_sets(parsed, at_root, method, weights, mask):
    setting = "experiments/budget_study/settings/c10_r20_5k_10ep.flags"
    got = effective(parsed, f"--flagfile={setting}", f"--flagfile=experiments/budget_study/methods/{method}.flags")
    assert got[:2] == (weights, mask)


def test_the_quickstart_trains_the_recipe(parsed, at_root):
    assert effective(parsed, "--flagfile=experiments/quickstart.flags")[:2] == (RECIPE_LOSS_WEIGHTS, "teacher_correct")


def test_flags_txt_states_what_the_set_filled(parsed, tmp_path):
    from ffsd_tf import run

    parsed("--loss_weights=paper", "--lambda_kl=0.25")
    text = run.effective_flags_text()
    assert "--loss_weights=paper" in text.splitlines()
    assert "--lambda_kl=0.25" in text.splitlines() and "--lambda_fusion_kl_schedule=constant" in text.splitlines()
    assert "--leader_kl_mask=none" in text.splitlines()
    replay = tmp_path / "flags.txt"
    replay.write_text(text.replace("--loss_weights=paper", "--loss_weights=recipe"))
    weights, mask, _ = effective(parsed, f"--flagfile={replay}")  # every filled value is stated
    assert weights == {**PAPER_LOSS_WEIGHTS, "kl": (0.25, "constant")} and mask == "none"


def test_a_config_json_without_the_set_loads_as_the_papers(parsed):
    from ffsd_tf import flags as ffsd_flags

    parsed("--loss_weights=paper", "--lambda_kl=0.5")
    d = json.loads(json.dumps(ffsd_flags.run_config().with_data(4, (8, 8, 3)).to_dict()))
    assert d["loss_weights"].pop("base") == "paper"
    stored = run_config.RunConfig.from_dict(d)
    assert stored.loss_weights.base == "paper" and stored.loss_weights.values["kl"] == 0.5
    assert stored.settings()["loss_weights"] == "paper"
    assert "loss_weights" in run_config.NEUTRAL  # the set only fills values that are compared themselves
    with pytest.raises(run_config.ConfigError, match="loss_weights=fancy is no named set"):
        run_config.RunConfig.from_dict({**d, "loss_weights": {**d["loss_weights"], "base": "fancy"}})
