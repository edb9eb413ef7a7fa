"""The table of FFSD's loss terms: which model owns each, the loss weight that multiplies it, and
when a cohort has it (TensorFlow-free).

One declarative table drives three things, so they cannot drift apart:

* each model's loss in ``trainer.FFSD.compute_losses``: the sum, in table order, of its terms
  times their weights (``model_loss``); a term the trainer computes that the table lacks, or the
  reverse, is an error there;
* the training metrics: ``<model>/<term>`` (unweighted) and ``<model>/loss`` (the weighted sum)
  for every model of the cohort (``metric_names``);
* the loss weights a cohort uses (``active_loss_weights``: logged as ``weights/<name>``, read by
  the report to name a run's set).

=========  ==============  ==================  =============================================
model      term            weight              equation (as the authors code it)
=========  ==============  ==================  =============================================
student i  ce              1                   Eq. 2
student i  kl              kl                  Eq. 2: T^2 mean_{j!=i} KL(p_j || p_i)
student i  diversity       diversity           Eqs. 9, 11 (i >= 2, vs S_{i-1}) or Eq. 6 (l2)
student i  sd_diversity    diversity           Eq. 12: shallow maps vs its decoder (i >= 2)
student i  teacher_kd      teacher_kd          Hinton KD from a fixed teacher (Table II)
student i  teacher_at      teacher_at          attention transfer from it (Table II)
fusion     ce              1                   Eq. 4
fusion     kl              fusion_kl           Eq. 4: T^2 KL(p_e || p_f)
leader     ce              1                   Eq. 14
leader     kl              leader_kl           Eq. 14: T^2 KL(p_f || p_0)
leader     fusion_feature  fusion              Eq. 5: A-loss(F_0^L, F_f)
leader     fusion_sigma    fusion              Eq. 5: A-loss(sigma(F_0^L), F_e)
leader     sd              fusion              Eq. 13: shallow maps vs its decoder's of F_f
decoder    sd              self_distillation   Eq. 10 (each decoder on its own network)
=========  ==============  ==================  =============================================

Model names: ``student1..n``, ``fusion``, ``leader``, and ``sd_<owner>`` for the decoder of
``student2..n`` or ``leader``. The term's owner is the only model its gradient reaches (tested in
``tests/test_trainer.py``); ``ROLE_OF`` says which optimizer that model belongs to.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

from ffsd_tf.recipes import LOSS_WEIGHTS


@dataclasses.dataclass(frozen=True)
class Cohort:
    """What decides which terms exist, read once from ``FFSDConfig``'s fields (a dict)."""

    num_students: int
    leader: bool
    fusion: bool
    diversity: str
    mutual_learning: bool
    student_decoders: bool
    leader_decoder: bool
    teacher_terms: tuple

    @classmethod
    def of(cls, config: Mapping) -> "Cohort":
        n = int(config.get("num_students", 2))
        leader = bool(config.get("leader", True))
        fusion = leader and bool(config.get("fusion", True))
        diversity, sd = config.get("diversity", "attention"), config.get("self_distillation", "both")
        teacher = str(config.get("teacher_loss", "kd")).split("_") if config.get("teacher") else []
        return cls(
            num_students=n,
            leader=leader,
            fusion=fusion,
            diversity=diversity,
            mutual_learning=bool(config.get("mutual_learning", True)),
            student_decoders=diversity == "attention" and sd in ("both", "students") and n >= 2,
            leader_decoder=fusion and sd in ("both", "leader"),
            teacher_terms=tuple(teacher),
        )


@dataclasses.dataclass(frozen=True)
class LossTerm:
    model: str  # "student", "fusion", "leader" or "decoder"
    name: str  # the metric is "<model name>/<name>"
    weight: str | None  # the loss weight multiplying it (a LOSS_WEIGHTS key); None: 1
    applies: Callable[[Cohort, int], bool]  # (cohort, index of the student or decoder owner) -> has it
    equation: str


def _always(c: Cohort, i: int) -> bool:
    return True


LOSS_TERMS = (
    LossTerm("student", "ce", None, _always, "Eq. 2"),
    LossTerm("student", "kl", "kl", lambda c, i: c.mutual_learning and c.num_students > 1, "Eq. 2"),
    LossTerm("student", "diversity", "diversity",
             lambda c, i: (c.diversity == "attention" and i >= 1) or (c.diversity == "l2" and c.num_students > 1),
             "Eqs. 9, 11 / Eq. 6"),
    LossTerm("student", "sd_diversity", "diversity", lambda c, i: c.student_decoders and i >= 1, "Eq. 12"),
    LossTerm("student", "teacher_kd", "teacher_kd", lambda c, i: "kd" in c.teacher_terms, "Table II, KD"),
    LossTerm("student", "teacher_at", "teacher_at", lambda c, i: "at" in c.teacher_terms, "Table II, AT"),
    LossTerm("fusion", "ce", None, _always, "Eq. 4"),
    LossTerm("fusion", "kl", "fusion_kl", _always, "Eq. 4"),
    LossTerm("leader", "ce", None, _always, "Eq. 14"),
    LossTerm("leader", "kl", "leader_kl", _always, "Eq. 14"),
    LossTerm("leader", "fusion_feature", "fusion", lambda c, i: c.fusion, "Eq. 5"),
    LossTerm("leader", "fusion_sigma", "fusion", lambda c, i: c.fusion, "Eq. 5"),
    LossTerm("leader", "sd", "fusion", lambda c, i: c.leader_decoder, "Eq. 13"),
    LossTerm("decoder", "sd", "self_distillation", _always, "Eq. 10"),
)
ROLE_OF = {"student": "students", "fusion": "fusion", "leader": "leader", "decoder": "decoders"}


def models(config: Mapping) -> list[tuple[str, str, int]]:
    """(model name, kind, index) of every model with a loss, in the trainer's order; the index is
    the student's (0-based) for students and for a student's decoder, else 0."""
    c = Cohort.of(config)
    out = [(f"student{i + 1}", "student", i) for i in range(c.num_students)]
    if c.fusion:
        out.append(("fusion", "fusion", 0))
    if c.leader:
        out.append(("leader", "leader", 0))
    if c.student_decoders:
        out += [(f"sd_student{i + 1}", "decoder", i) for i in range(1, c.num_students)]
    if c.leader_decoder:
        out.append(("sd_leader", "decoder", 0))
    return out


def terms_of(config: Mapping, kind: str, index: int = 0) -> list[LossTerm]:
    """The rows of ``LOSS_TERMS`` a model of ``kind`` (its ``index``) has in this cohort, in order."""
    c = Cohort.of(config)
    return [t for t in LOSS_TERMS if t.model == kind and t.applies(c, index)]


def metric_names(config: Mapping) -> list[str]:
    """Every per-model training metric of the loss: ``<model>/loss`` then ``<model>/<term>``."""
    return [f"{name}/{x}" for name, kind, i in models(config) for x in ["loss", *(t.name for t in terms_of(config, kind, i))]]


def model_loss(values: Mapping, weights: Mapping, rows: list[LossTerm], model: str = "model"):
    """sum over ``rows`` of ``weights[row.weight] * values[row.name]`` (1 for ``weight=None``), in
    row order. ``values`` must hold exactly the rows' terms (else ``ValueError``: the table and the
    code computing the terms disagree)."""
    names = [t.name for t in rows]
    if set(values) != set(names):
        raise ValueError(f"{model}: terms computed {sorted(values)} but the loss-term table lists {names}")
    total = None
    for t in rows:
        v = values[t.name] if t.weight is None else weights[t.weight] * values[t.name]
        total = v if total is None else total + v
    return total


def active_loss_weights(config: Mapping) -> list[str]:
    """The loss weights some term of this cohort uses, in ``LOSS_WEIGHTS`` order."""
    used = {t.weight for _, kind, i in models(config) for t in terms_of(config, kind, i)}
    return [k for k in LOSS_WEIGHTS if k in used]
