"""benchmarks/teacher_agreement.py: its agreement, KL and split accuracies against NumPy, over batches."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from benchmarks.teacher_agreement import agreement, all_logits
from ffsd_tf.trainer import FFSD, FFSDConfig
from tests.conftest import TINY_COHORT as TINY


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_agreement_matches_numpy_over_uneven_batches():
    keras.utils.set_random_seed(0)  # the initial weights: student 1 and the teacher differ on some images
    model = FFSD(FFSDConfig(**TINY, ema_decay=0.9), loss_weights="recipe")
    rng = np.random.default_rng(0)
    images = rng.normal(size=(20, 16, 16, 3)).astype(np.float32)
    logits = {k: v.numpy() for k, v in all_logits(model, tf.constant(images)).items()}
    assert set(logits) == {"student1", "student2", "fusion", "leader",
                           "student1_ema", "student2_ema", "fusion_ema", "leader_ema"}
    teacher, temperature = "fusion", 2.0
    t_pred = logits[teacher].argmax(-1)
    # Labels: the teacher right on the first 12 images; on the rest, student 1's class where it
    # differs from the teacher's (so a classifier is right where the teacher is wrong), else another.
    s_pred = logits["student1"].argmax(-1)
    other = np.where(s_pred != t_pred, s_pred, (t_pred + 1) % 10)
    labels = np.where(np.arange(20) < 12, t_pred, other).astype(np.int32)
    assert (s_pred[12:] != t_pred[12:]).any()  # the "where it is wrong" column is not all zeros
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)  # 8, 8, 4: uneven
    got = agreement(model, dataset, teacher, temperature)
    p_t = np.exp(np_log_softmax(logits[teacher] / temperature))
    for name, z in logits.items():
        pred = z.argmax(-1)
        ok = pred == labels
        kl = (p_t * (np_log_softmax(logits[teacher] / temperature) - np_log_softmax(z / temperature))).sum(-1)
        want = (100 * ok.mean(), 100 * (pred == t_pred).mean(), (kl * temperature ** 2).mean(),
                100 * ok[:12].mean(), 100 * ok[12:].mean())
        np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-4, err_msg=name)
    assert got[teacher][1] == pytest.approx(100) and got[teacher][2] == pytest.approx(0, abs=1e-5)
