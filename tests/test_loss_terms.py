"""ffsd_tf.loss_terms: the one table of (model, term, weight) drives the trainer's losses, its
metrics and the loss weights a run logs. Expectations here are written out by hand from the
paper's equations, not read from the table."""

import numpy as np
import pytest
import tensorflow as tf

from ffsd_tf import loss_terms
from ffsd_tf.trainer import FFSD, FFSDConfig
from tests.conftest import TINY_COHORT as TINY

# Every weight distinct and off 1, so a term given another's weight (or none) shows.
WEIGHTS = {"kl": 1.5, "fusion_kl": 2.5, "leader_kl": 3.5, "diversity": 4.5, "fusion": 5.5,
           "self_distillation": 6.5, "teacher_kd": 7.5, "teacher_at": 8.5}


def batch(seed=4, n=6):
    rng = np.random.default_rng(seed)
    return (tf.constant(rng.normal(size=(n, 16, 16, 3)).astype(np.float32)),
            tf.constant(rng.integers(0, 10, n).astype(np.int32)))


def losses_of(config):
    model = FFSD(config, loss_weights=WEIGHTS)
    model.set_epoch(3)
    per_role, terms, _ = model.compute_losses(*batch(), training=True)
    return model, {k: float(v) for k, v in per_role.items()}, {k: float(v) for k, v in terms.items()}


def test_each_models_loss_is_its_terms_weighted_as_the_equations_say():
    _, per_role, t = losses_of(FFSDConfig(**TINY))
    w = WEIGHTS
    expected = {
        "student1": t["student1/ce"] + w["kl"] * t["student1/kl"],  # Eq. 2
        "student2": t["student2/ce"] + w["kl"] * t["student2/kl"]
        + w["diversity"] * (t["student2/diversity"] + t["student2/sd_diversity"]),  # Eqs. 2, 11, 12
        "fusion": t["fusion/ce"] + w["fusion_kl"] * t["fusion/kl"],  # Eq. 4
        "leader": t["leader/ce"] + w["leader_kl"] * t["leader/kl"]
        + w["fusion"] * (t["leader/fusion_feature"] + t["leader/fusion_sigma"] + t["leader/sd"]),  # Eqs. 5, 13, 14
        "sd_student2": w["self_distillation"] * t["sd_student2/sd"],  # Eq. 10
        "sd_leader": w["self_distillation"] * t["sd_leader/sd"],
    }
    for model, value in expected.items():
        assert t[f"{model}/loss"] == pytest.approx(value, rel=1e-5), model
    assert per_role["students"] == pytest.approx(expected["student1"] + expected["student2"], rel=1e-5)
    assert per_role["leader"] == pytest.approx(expected["leader"], rel=1e-5)
    assert per_role["fusion"] == pytest.approx(expected["fusion"], rel=1e-5)
    assert per_role["decoders"] == pytest.approx(expected["sd_student2"] + expected["sd_leader"], rel=1e-5)


def test_an_offline_teachers_terms_are_weighted_too():
    _, per_role, t = losses_of(FFSDConfig(**TINY, leader=False, teacher="resnet8", teacher_loss="kd_at"))
    w = WEIGHTS
    s1 = t["student1/ce"] + w["kl"] * t["student1/kl"] + w["teacher_kd"] * t["student1/teacher_kd"] \
        + w["teacher_at"] * t["student1/teacher_at"]
    assert t["student1/loss"] == pytest.approx(s1, rel=1e-5)
    assert {"fusion/loss", "leader/loss"}.isdisjoint(t)


@pytest.mark.parametrize("options", [
    dict(),
    dict(num_students=3, diversity="l2"),
    dict(num_students=1),
    dict(fusion=False, self_distillation="students"),
    dict(leader=False, mutual_learning=False, diversity="none"),
    dict(leader=False, teacher="resnet8", teacher_loss="kd_at"),
])
def test_every_logged_term_has_a_metric_and_every_metric_is_logged(options):
    model, _, terms = losses_of(FFSDConfig(**{**TINY, **options}))
    trackers = set(model._train_trackers)
    assert set(terms) == {k for k in trackers if not k.endswith("/acc") and k != "loss"}


@pytest.mark.parametrize("options,expected", [
    (dict(), ["kl", "fusion_kl", "leader_kl", "diversity", "fusion", "self_distillation"]),
    (dict(self_distillation="none", diversity="none"), ["kl", "fusion_kl", "leader_kl", "fusion"]),
    (dict(fusion=False, self_distillation="leader"), ["kl", "leader_kl", "diversity"]),  # no leader decoder
    (dict(num_students=1), ["fusion_kl", "leader_kl", "fusion", "self_distillation"]),
    (dict(leader=False, mutual_learning=False, diversity="none"), []),
    (dict(leader=False, mutual_learning=False, diversity="none", teacher="resnet8", teacher_loss="at"),
     ["teacher_at"]),
])
def test_the_weights_a_cohort_uses(options, expected):
    assert loss_terms.active_loss_weights({**TINY, **options}) == expected


def test_a_term_the_table_lacks_is_an_error(monkeypatch):
    """Break the table once (drop the leader's sigma term): the trainer refuses, naming the model."""
    rows = tuple(t for t in loss_terms.LOSS_TERMS if (t.model, t.name) != ("leader", "fusion_sigma"))
    monkeypatch.setattr(loss_terms, "LOSS_TERMS", rows)
    model = FFSD(FFSDConfig(**TINY))
    with pytest.raises(ValueError, match="leader: terms computed .*fusion_sigma"):
        model.compute_losses(*batch(), training=True)


def test_model_loss_sums_in_table_order_with_weights():
    rows = loss_terms.terms_of({"num_students": 2}, "fusion")
    assert [r.name for r in rows] == ["ce", "kl"]
    assert loss_terms.model_loss({"ce": 1.0, "kl": 2.0}, {"fusion_kl": 0.25}, rows) == 1.5
    with pytest.raises(ValueError, match="fusion"):
        loss_terms.model_loss({"ce": 1.0}, {"fusion_kl": 0.25}, rows, "fusion")


def test_the_leaders_kl_is_masked_to_the_samples_its_teacher_gets_right():
    """leader_kl_mask="teacher_correct": the leader's Eq. 14 KL only where the fusion classifier's
    top class is the label (NumPy, from the logits of the same forward pass); "none" keeps all."""
    images, _ = batch()
    model = FFSD(FFSDConfig(**TINY, leader_kl_mask="teacher_correct"), loss_weights=WEIGHTS)
    model.set_epoch(3)
    _, _, logits = model.compute_losses(images, tf.zeros([6], tf.int32), training=True)
    z_f = logits["fusion"].numpy()
    labels = z_f.argmax(axis=-1)
    labels[:3] = (labels[:3] + 1) % 10  # the teacher is wrong on 3 samples, right on 3
    _, terms, logits = model.compute_losses(images, tf.constant(labels.astype(np.int32)), training=True)
    np.testing.assert_allclose(logits["fusion"].numpy(), z_f, rtol=1e-5)
    t = model.config.temperature

    def log_softmax(z):
        z = z - z.max(axis=-1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))

    lt, ls = log_softmax(z_f / t), log_softmax(logits["leader"].numpy() / t)
    per_sample = t * t * (np.exp(lt) * (lt - ls)).sum(axis=-1)
    assert float(terms["leader/kl"]) == pytest.approx(per_sample[3:].sum() / 6, rel=1e-4)
    assert float(terms["leader/kl"]) < per_sample.mean()
    # The leader's loss still weights its KL with lambda_leader_kl (the table's row).
    assert float(terms["leader/loss"]) == pytest.approx(
        float(terms["leader/ce"]) + WEIGHTS["leader_kl"] * float(terms["leader/kl"])
        + WEIGHTS["fusion"] * sum(float(terms[f"leader/{k}"]) for k in ("fusion_feature", "fusion_sigma", "sd")),
        rel=1e-5)


@pytest.mark.parametrize("options, message", [
    (dict(leader_kl_mask="wrong_only"), "leader_kl_mask must be one of"),
    (dict(leader_kl_mask="teacher_correct", leader=False), "needs leader=True"),
])
def test_a_bad_leader_kl_mask_is_refused(options, message):
    with pytest.raises(ValueError, match=message):
        FFSDConfig(**TINY, **options)
