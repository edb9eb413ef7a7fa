"""Every FFSD loss, attention map and target against an independent NumPy computation.

The NumPy references below are written from the authors' PyTorch code as documented in
``shared/design/official-code-detailed.md`` section 5 (NCHW there; NHWC here). The golden values of
section 9 of that document were produced by running the authors' own functions.
"""

import numpy as np
import pytest
import tensorflow as tf

from ffsd_tf import attention, losses

TOL = 1e-5


# ----------------------------------------------------------------------------- NumPy references
def np_attention(f):  # f: B,H,W,C
    return (f.astype(np.float64) ** 2).mean(axis=-1)


def np_normalize(x):
    v = x.reshape(x.shape[0], -1).astype(np.float64)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def np_normalized_mse(x, y):
    return ((np_normalize(x) - np_normalize(y)) ** 2).mean()


def np_diversity_target(a):
    flat = a.reshape(a.shape[0], -1).astype(np.float64)
    p = np.linalg.norm(flat, axis=1, keepdims=True)
    n = np_normalize(flat)
    k = flat.shape[1] // 3
    t = np.sort(n, axis=1)[:, k - 1 : k]
    return (p / 2 - n) * np.sign(n - t) + p / 2, n, p


def np_diversity_loss(f_cur, f_prev):
    target, _, _ = np_diversity_target(np_attention(f_prev))
    return ((np_normalize(np_attention(f_cur)) - target) ** 2).mean()


def np_diversity_feature_target(f):
    b, h, w, c = f.shape
    target, n, p = np_diversity_target(np_attention(f))
    return f + ((target - n) * p / c).reshape(b, h, w, 1)


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_kl(student, teacher, t):
    lt, ls = np_log_softmax(teacher / t), np_log_softmax(student / t)
    return t * t * (np.exp(lt) * (lt - ls)).sum(axis=-1).mean()


def np_ce(z, y):
    return -np_log_softmax(z)[np.arange(len(y)), y].mean()


def tf32(x):
    return tf.constant(np.asarray(x, np.float32))


# ----------------------------------------------------------------------------- maps and targets
def test_attention_map_is_channel_mean_of_squares(rng):
    f = rng.normal(size=(3, 5, 4, 7))
    np.testing.assert_allclose(attention.attention_map(tf32(f)).numpy(), np_attention(f), rtol=TOL, atol=TOL)


def test_per_sample_normalisation(rng):
    x = rng.normal(size=(4, 6, 5)) * rng.uniform(0.1, 10, size=(4, 1, 1))
    out = attention.normalize(tf32(x)).numpy()
    np.testing.assert_allclose(out, np_normalize(x), rtol=TOL, atol=TOL)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=TOL)
    # An all-zero map stays zero (torch: v / max(||v||, 1e-12)), never NaN.
    assert np.all(attention.normalize(tf.zeros([1, 3, 3])).numpy() == 0)


@pytest.mark.parametrize("hw", [(3, 3), (8, 8), (7, 7), (4, 6)])
def test_diversity_target_matches_numpy_and_threshold(rng, hw):
    a = rng.uniform(0, 2, size=(5, *hw))
    target, n, p = attention.diversity_target(tf32(a))
    ref_target, ref_n, ref_p = np_diversity_target(a)
    np.testing.assert_allclose(target.numpy(), ref_target, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(p.numpy(), ref_p, rtol=TOL)
    # Threshold semantics: below the floor(HW/3)-th smallest value the target is n(A), the
    # threshold element itself is P/2, above it P - n(A).
    k = hw[0] * hw[1] // 3
    for b in range(a.shape[0]):
        order = np.argsort(ref_n[b])
        t_idx = order[k - 1]
        np.testing.assert_allclose(target.numpy()[b, order[: k - 1]], ref_n[b, order[: k - 1]], rtol=TOL, atol=TOL)
        np.testing.assert_allclose(target.numpy()[b, t_idx], ref_p[b, 0] / 2, rtol=TOL)
        np.testing.assert_allclose(
            target.numpy()[b, order[k:]], ref_p[b, 0] - ref_n[b, order[k:]], rtol=TOL, atol=TOL
        )


def test_diversity_loss_matches_numpy(rng):
    f_cur, f_prev = rng.normal(size=(2, 4, 8, 8, 6))
    out = losses.diversity_loss(tf32(f_cur), tf32(f_prev)).numpy()
    np.testing.assert_allclose(out, np_diversity_loss(f_cur, f_prev), rtol=TOL)


def test_diversity_feature_target_matches_numpy(rng):
    f = rng.normal(size=(3, 8, 8, 5))
    out = attention.diversity_feature_target(tf32(f)).numpy()
    np.testing.assert_allclose(out, np_diversity_feature_target(f), rtol=TOL, atol=TOL)


# The authors' functions, run by the design team on these inputs (official-code-detailed.md s.9).
def _golden_inputs():
    f_prev = (((np.arange(72) % 7) - 3).reshape(2, 4, 3, 3) / 2).transpose(0, 2, 3, 1)  # NCHW -> NHWC
    f_cur = np.cos(np.arange(72)).reshape(2, 4, 3, 3).transpose(0, 2, 3, 1)
    return f_cur, f_prev


def test_golden_values_of_the_authors_code():
    f_cur, f_prev = _golden_inputs()
    _, _, p = attention.diversity_target(attention.attention_map(tf32(f_prev)))
    np.testing.assert_allclose(p.numpy()[:, 0], [3.13061995, 3.01946808], rtol=1e-6)
    np.testing.assert_allclose(losses.diversity_loss(tf32(f_cur), tf32(f_prev)).numpy(), 3.35481248298663, rtol=1e-5)
    shift = (attention.diversity_feature_target(tf32(f_prev)) - tf32(f_prev)).numpy()[..., 0].reshape(2, 9)
    np.testing.assert_allclose(
        shift[0], [1.82519531, 1.91894531, 0.99072266, 0, 0, 0.99072266, 1.91894531, 1.82519531, 1.91894531], atol=1e-5
    )
    np.testing.assert_allclose(
        shift[1], [1.74804688, 0.90527344, 0, 0, 0.90527344, 1.74804688, 1.65429688, 1.74804688, 0.90527344], atol=1e-5
    )
    np.testing.assert_allclose(losses.attention_loss(tf32(f_cur), tf32(f_prev)).numpy(), 0.01578524233755405, rtol=1e-5)
    np.testing.assert_allclose(losses.normalized_mse(tf32(f_cur), tf32(f_prev)).numpy(), 0.0570055480154183, rtol=1e-5)
    zi = [[1, 2, 3, 0.5], [0, -1, 2, 1]]
    zj = [[0.5, 2.5, 1, 0], [1, 1, -2, 3]]
    np.testing.assert_allclose(losses.distillation_kl(tf32(zi), tf32(zj), 2.0).numpy(), 1.1654614401367251, rtol=1e-6)


# ----------------------------------------------------------------------------- losses
def test_attention_loss_matches_numpy(rng):
    x, y = rng.normal(size=(2, 4, 6, 6, 3))
    out = losses.attention_loss(tf32(x), tf32(y)).numpy()
    np.testing.assert_allclose(out, np_normalized_mse(np_attention(x), np_attention(y)), rtol=TOL)


@pytest.mark.parametrize("t", [1.0, 2.0, 4.0])
def test_kl_with_temperature_squared(rng, t):
    s, te = rng.normal(size=(2, 6, 10)) * 3
    np.testing.assert_allclose(losses.distillation_kl(tf32(s), tf32(te), t).numpy(), np_kl(s, te, t), rtol=TOL)
    # Extreme logits: no clipping artefacts, still finite and equal to the reference.
    s2 = s * 50
    np.testing.assert_allclose(losses.distillation_kl(tf32(s2), tf32(te), t).numpy(), np_kl(s2, te, t), rtol=1e-4)


def test_cross_entropy(rng):
    z = rng.normal(size=(8, 5))
    y = rng.integers(0, 5, 8)
    np.testing.assert_allclose(losses.cross_entropy(tf32(z), tf.constant(y)).numpy(), np_ce(z, y), rtol=TOL)


def test_fusion_loss_eq4(rng):
    """Eq. 4: CE(z_f) + T^2 KL(softmax(mean_i z_i / T) || softmax(z_f / T))."""
    z_students = rng.normal(size=(3, 8, 10))
    z_f = rng.normal(size=(8, 10))
    y = rng.integers(0, 10, 8)
    z_e = z_students.mean(axis=0)
    ours = losses.cross_entropy(tf32(z_f), tf.constant(y)) + losses.distillation_kl(tf32(z_f), tf32(z_e), 2.0)
    np.testing.assert_allclose(ours.numpy(), np_ce(z_f, y) + np_kl(z_f, z_e, 2.0), rtol=TOL)


def test_leader_feature_losses_eq5(rng):
    f_leader = rng.normal(size=(4, 8, 8, 6))
    f_fused = np.abs(rng.normal(size=(4, 8, 8, 6)))
    sigma = rng.normal(size=(4, 8, 8, 12))
    f_e = rng.normal(size=(4, 8, 8, 12))
    ours = losses.attention_loss(tf32(f_leader), tf32(f_fused)) + losses.attention_loss(tf32(sigma), tf32(f_e))
    ref = np_normalized_mse(np_attention(f_leader), np_attention(f_fused)) + np_normalized_mse(
        np_attention(sigma), np_attention(f_e)
    )
    np.testing.assert_allclose(ours.numpy(), ref, rtol=TOL)


def test_self_distillation_target_loss_eq11_13(rng):
    feats = [rng.normal(size=(3, 16, 16, 4)), rng.normal(size=(3, 8, 8, 8))]
    decoded = [rng.normal(size=(3, 16, 16, 4)), rng.normal(size=(3, 8, 8, 8))]
    ours = losses.sd_target_loss([tf32(f) for f in feats], [tf32(d) for d in decoded]).numpy()
    ref = sum(np_normalized_mse(np_attention(f), np_attention(d)) for f, d in zip(feats, decoded))
    np.testing.assert_allclose(ours, ref, rtol=TOL)


def test_decoder_loss_eq10(rng):
    decoded = [rng.normal(size=(3, 16, 16, 4)), rng.normal(size=(3, 8, 8, 8))]
    real = [rng.normal(size=(3, 16, 16, 4)), rng.normal(size=(3, 8, 8, 8))]
    ours = losses.decoder_loss([tf32(d) for d in decoded], [tf32(r) for r in real]).numpy()
    ref = sum(
        np_normalized_mse(d, r) + np_normalized_mse(np_attention(d), np_attention(r)) for d, r in zip(decoded, real)
    )
    np.testing.assert_allclose(ours, ref, rtol=TOL)


def test_l2_diversity_eq6(rng):
    fa = [rng.normal(size=(3, 8, 8, 4)), rng.normal(size=(3, 4, 4, 8))]
    fb = [rng.normal(size=(3, 8, 8, 4)), rng.normal(size=(3, 4, 4, 8))]
    ours = losses.l2_diversity_loss([tf32(f) for f in fa], [tf32(f) for f in fb]).numpy()
    ref = -np.mean([np.linalg.norm((a - b).reshape(3, -1), axis=1).mean() for a, b in zip(fa, fb)])
    np.testing.assert_allclose(ours, ref, rtol=TOL)


def test_targets_are_stop_gradiented(rng):
    """The "target" arguments never receive gradient (the authors' .detach())."""
    x, y = tf.Variable(tf32(rng.normal(size=(2, 4, 4, 3)))), tf.Variable(tf32(rng.normal(size=(2, 4, 4, 3))))
    for fn in (losses.normalized_mse, losses.attention_loss, losses.diversity_loss):
        with tf.GradientTape() as tape:
            value = fn(x, y)
        gx, gy = tape.gradient(value, [x, y])
        assert gx is not None and np.abs(gx.numpy()).sum() > 0, fn.__name__
        assert gy is None, fn.__name__
    zs, zt = tf.Variable(tf32(rng.normal(size=(2, 5)))), tf.Variable(tf32(rng.normal(size=(2, 5))))
    with tf.GradientTape() as tape:
        value = losses.distillation_kl(zs, zt, 2.0)
    gs, gt = tape.gradient(value, [zs, zt])
    assert gs is not None and gt is None


def test_teacher_correct_mask_and_masked_kl_match_numpy(rng):
    """--leader_kl_mask=teacher_correct (not in the paper): per-sample T^2 KL kept where the
    teacher's top class is the label, summed over the kept samples and divided by the batch size."""
    s, te = rng.normal(size=(2, 8, 5)) * 3
    y = te.argmax(axis=-1)
    y[::2] = (y[::2] + 1) % 5  # the teacher is wrong on the even samples, right on the odd ones
    mask = losses.teacher_correct(tf32(te), tf.constant(y)).numpy()
    np.testing.assert_array_equal(mask, (te.argmax(axis=-1) == y).astype(np.float32))
    assert mask.tolist() == [0.0, 1.0] * 4
    t = 3.0
    lt, ls = np_log_softmax(te / t), np_log_softmax(s / t)
    per_sample = t * t * (np.exp(lt) * (lt - ls)).sum(axis=-1)
    masked = losses.distillation_kl(tf32(s), tf32(te), t, sample_mask=tf.constant(mask)).numpy()
    np.testing.assert_allclose(masked, (per_sample * mask).sum() / len(y), rtol=TOL)
    assert masked < losses.distillation_kl(tf32(s), tf32(te), t).numpy()
    # Masked samples get no gradient; kept ones get the unmasked KL's gradient / 1 (same batch mean).
    zs = tf.Variable(tf32(s))
    with tf.GradientTape(persistent=True) as tape:
        full = losses.distillation_kl(zs, tf32(te), t)
        part = losses.distillation_kl(zs, tf32(te), t, sample_mask=tf.constant(mask))
    g_full, g_part = tape.gradient(full, zs).numpy(), tape.gradient(part, zs).numpy()
    np.testing.assert_array_equal(g_part[::2], 0.0)
    np.testing.assert_allclose(g_part[1::2], g_full[1::2], rtol=1e-5)
