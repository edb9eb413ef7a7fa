"""benchmarks/leader_gradients.py: it weights each leader term as the trainer's loss does."""

import numpy as np
import pytest
import tensorflow as tf

from benchmarks.leader_gradients import leader_terms, summarize, term_gradients
from ffsd_tf.trainer import FFSD, FFSDConfig
from tests.conftest import TINY_COHORT as TINY


@pytest.fixture(scope="module")
def cohort():
    # Weights off 1 everywhere, so a term given the wrong weight shows.
    weights = {"leader_kl": (2.5, "constant"), "fusion": (7.0, "constant")}
    model = FFSD(FFSDConfig(**TINY), loss_weights=weights)
    model.set_epoch(6)
    return model


def batch(seed=3, n=8):
    rng = np.random.default_rng(seed)
    return (tf.constant(rng.normal(size=(n, 16, 16, 3)).astype(np.float32)),
            tf.constant(rng.integers(0, 10, n).astype(np.int32)))


def test_the_weighted_terms_add_up_to_the_leaders_loss(cohort):
    grads = term_gradients(cohort, *batch())
    terms = leader_terms(cohort)
    assert set(grads) == {*terms, "leader/loss"} and len(terms) == 5  # ce, kl, fusion_feature, fusion_sigma, sd
    total = [tf.add_n(parts) for parts in zip(*(grads[k] for k in terms))]
    for summed, whole in zip(total, grads["leader/loss"]):
        np.testing.assert_allclose(summed.numpy(), whole.numpy(), rtol=1e-4, atol=1e-6)


def test_every_leader_term_of_the_trainer_is_measured(cohort):
    _, terms, _ = cohort.compute_losses(*batch())
    assert {k for k in terms if k.startswith("leader/")} - {"leader/loss"} == set(leader_terms(cohort))


def test_summary_norms_and_cosines():
    a = [tf.constant([3.0, 0.0]), tf.constant([[4.0]])]
    per_batch = [{"leader/ce": a, "leader/kl": [-x for x in a]}]
    rows = summarize(per_batch)
    assert rows["leader/ce"] == pytest.approx((5.0, 1.0))
    assert rows["leader/kl"] == pytest.approx((5.0, -1.0))
