"""The two named sets of loss weights, and which weights a cohort uses (TensorFlow-free).

Every FFSD loss weight is ``value * schedule(epoch)`` (``schedules.parse_weight_schedule``):

* ``PAPER_LOSS_WEIGHTS``: the authors' code (``--loss_weights=paper``, which every flagfile of
  ``experiments/paper/`` states).
* ``RECIPE_LOSS_WEIGHTS``: the recipe for users' own training (issue 14; the default of the Python
  API and of the CLI's ``--loss_weights``, and ``experiments/recipes/robust.flags``, held equal by
  ``tests/test_recipe.py``): the
  paper's values with **no mutual KL between the common students** (``kl`` = 0) and the fusion
  and leader KL terms warmed up over 5 epochs. Measured (RESULTS.md, "Budget study"): the mutual
  KL makes the students agree, so their ensemble and the fusion classifier, the leader's teacher,
  end only ~0.5 points above them; independent students leave the fusion classifier 1-2 points
  above, and the leader learns more from it. Without the mutual KL nothing can blow up in the first
  steps either (RESULTS.md, follow-up 3); the warm-ups keep the other two KL terms gentle.
  The recipe is these weights and ``RECIPE_OPTIONS``: the leader's KL (Eq. 14) only on the samples
  its teacher classifies correctly (``leader_kl_mask="teacher_correct"``; RESULTS.md, "The leader's
  KL mask"), so a wrong fusion classifier never pulls the leader away from the label.
* ``KL_WARMUP_LOSS_WEIGHTS``: the paper's values with every KL term warmed up over 5 epochs (the
  recipe before the budget study; DML's weights in it). Named so reports can tell its runs apart.

Which weights a cohort's terms use is ``loss_terms.active_loss_weights`` (the trainer logs those
as ``weights/<name>``; the report names a run's set from them). On the command line a set is
``--loss_weights=<name>``: it fills the flags it covers where they are not given
(``set_flag_values``).
"""

from __future__ import annotations

from typing import Mapping

# name -> (value, schedule spec of the 1-based epoch). Every one is a flag (--lambda_<name>[_schedule]).
PAPER_LOSS_WEIGHTS = {
    "kl": (1.0, "constant"),  # T^2 KL between common students (Eq. 2)
    "fusion_kl": (1.0, "constant"),  # T^2 KL of the fusion classifier to the students' mean (Eq. 4)
    "leader_kl": (1.0, "constant"),  # T^2 KL of the leader to the fusion classifier (Eq. 14)
    "diversity": (1e-5, "exp_warmup:5"),  # lambda_div: Eqs. 9 and 11
    "fusion": (10.0, "exp_warmup:5"),  # lambda_fea: Eq. 5 and, as coded, Eq. 13
    "self_distillation": (1000.0, "exp_warmup:5"),  # lambda_sd: the decoders' own loss, Eq. 10
    # Offline baselines of Table II (used only with a teacher): Hinton's T^2 KL, and attention
    # transfer with Zagoruyko & Komodakis' beta/2 = 1000/2 on the mean-squared A-loss.
    "teacher_kd": (1.0, "constant"),
    "teacher_at": (500.0, "constant"),
}
LOSS_WEIGHTS = tuple(PAPER_LOSS_WEIGHTS)
KL_WEIGHTS = ("kl", "fusion_kl", "leader_kl")
KL_WARMUP_LOSS_WEIGHTS = {
    key: (value, "exp_warmup:5" if key in KL_WEIGHTS else spec) for key, (value, spec) in PAPER_LOSS_WEIGHTS.items()
}
RECIPE_LOSS_WEIGHTS = {**KL_WARMUP_LOSS_WEIGHTS, "kl": (0.0, "constant")}
# The recipe's cohort options beyond the weights (FFSDConfig fields; the paper's values are the
# FFSDConfig defaults, "none" here). FFSD applies them where it builds the config itself
# (``recipe_options``); robust.flags sets the same flag.
RECIPE_OPTIONS = {"leader_kl_mask": "teacher_correct"}
NAMED_LOSS_WEIGHTS = {"recipe": RECIPE_LOSS_WEIGHTS, "kl_warmup": KL_WARMUP_LOSS_WEIGHTS, "paper": PAPER_LOSS_WEIGHTS}
# How a report names a run of a set other than the paper's (tried in this order).
WEIGHT_SET_LABELS = {"recipe": "recipe", "kl_warmup": "KL warm-up"}


def recipe_options(loss_weights, options: Mapping) -> dict:
    """``options`` (FFSDConfig fields given to FFSD) with the recipe's where the caller gave none:
    for ``loss_weights`` "recipe" (or None) or a mapping (weights over the recipe), not for "paper" or
    "kl_warmup". The leader's KL mask only where there is a leader (``leader`` defaults to True)."""
    over_recipe = loss_weights is None or loss_weights == "recipe" or isinstance(loss_weights, Mapping)
    if not (over_recipe and options.get("leader", True)):
        return dict(options)
    return {**RECIPE_OPTIONS, **options}


def named_set(weights: Mapping[str, tuple], active, among=("recipe", "kl_warmup", "paper")) -> str | None:
    """The first set of ``among`` that ``weights`` (name -> (value, spec)) equal on every ``active``
    weight, else None. Specs compare without spaces; a weight of 0 is 0 whatever its schedule."""

    def same(a, b):
        if float(a[0]) == float(b[0]) == 0.0:
            return True
        return float(a[0]) == float(b[0]) and str(a[1]).replace(" ", "") == str(b[1]).replace(" ", "")

    for name in among:
        if all(k in weights and same(weights[k], NAMED_LOSS_WEIGHTS[name][k]) for k in active):
            return name
    return None


def set_flag_values(name: str, leader: bool = True) -> dict:
    """The training flags that ``--loss_weights=name`` fills where the command line gives none:
    ``lambda_<k>`` and ``lambda_<k>_schedule`` of every loss weight, and ``leader_kl_mask`` (the
    recipe's ``RECIPE_OPTIONS`` with a leader, as ``recipe_options``; "none" otherwise). A flag
    that is given keeps its value. ``--partial_batch`` is no part of a set: its default is the
    recipe's ("drop_small") whatever the set, and the paper's flagfiles state "keep"."""
    if name not in NAMED_LOSS_WEIGHTS:
        raise ValueError(f"loss weights {name!r} are not a named set; use one of {sorted(NAMED_LOSS_WEIGHTS)}")
    out = {}
    for key, (value, spec) in NAMED_LOSS_WEIGHTS[name].items():
        out[f"lambda_{key}"], out[f"lambda_{key}_schedule"] = float(value), spec
    out["leader_kl_mask"] = recipe_options(name, {"leader": leader}).get("leader_kl_mask", "none")
    return out
