"""Attention maps, per-sample normalisation and the diversity targets (paper Eqs. 7 and 8).

All functions take NHWC tensors and compute in float32 (safe under mixed precision), or in float64
when given float64 (the parity harness, ``benchmarks/parity``, runs whole cohorts in float64).
"""

from __future__ import annotations

import tensorflow as tf

_NORM_EPS = 1e-24  # tf.math.l2_normalize's eps is on the squared norm: this is torch's max(||v||, 1e-12)


def loss_float(x) -> tf.Tensor:
    """``x`` as the loss computation's float: float32, or float64 when ``x`` already is float64."""
    x = tf.convert_to_tensor(x)
    return x if x.dtype == tf.float64 else tf.cast(x, tf.float32)


def attention_map(features: tf.Tensor) -> tf.Tensor:
    """Eq. (7) as coded: the channel *mean* of F^2, ``[B, H, W, C] -> [B, H, W]``.

    The paper sums over channels; the authors' code averages. Every use normalises per sample,
    except the diversity target's P (Eq. 8), which is therefore 1/C of the printed one.
    """
    features = loss_float(features)
    return tf.reduce_mean(tf.square(features), axis=-1)


def flatten(x: tf.Tensor) -> tf.Tensor:
    """``[B, ...] -> [B, N]`` in float32 (float64 stays), keeping N static (the threshold index k needs it)."""
    size = 1
    for d in x.shape[1:]:
        size *= int(d)
    return tf.reshape(loss_float(x), [-1, size])


def normalize(x: tf.Tensor) -> tf.Tensor:
    """Per-sample L2 normalisation of the flattened map: ``v / max(||v||_2, 1e-12)`` (F.normalize)."""
    return tf.math.l2_normalize(flatten(x), axis=1, epsilon=_NORM_EPS)


def diversity_target(attention: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Eq. (8) as coded, per sample. Returns ``(target, normalized, P)`` on flattened maps.

    ``normalized`` = n(A); ``P = ||A||_2`` of the *un-normalised* map; t = the floor(HW/3)-th
    smallest value of n(A); ``target = (P/2 - n(A)) * sign(n(A) - t) + P/2``: below t the target
    is n(A), at t it is P/2 (sign(0) = 0, ties included), above t it is P - n(A). The target is
    not re-normalised (Eq. 9 prints a normalisation the code does not do).
    """
    flat = flatten(attention)
    p = tf.norm(flat, axis=1, keepdims=True)
    normalized = tf.math.l2_normalize(flat, axis=1, epsilon=_NORM_EPS)
    k = max(int(flat.shape[1]) // 3, 1)
    threshold = -tf.math.top_k(-normalized, k=k).values[:, k - 1 : k]
    target = (p / 2.0 - normalized) * tf.sign(normalized - threshold) + p / 2.0
    return target, normalized, p


def diversity_feature_target(features: tf.Tensor) -> tf.Tensor:
    """The "diversity feature objective" F-bar of Sec. III-C as coded (``diversity_target``).

    Shifts F so its attention moves toward the Eq. (8) target: ``F + (target - n(A)) * P / C``,
    the same shift broadcast over every channel. Input and output are ``[B, H, W, C]``.
    """
    features = loss_float(features)
    shape = tf.shape(features)
    channels = features.shape[-1]
    target, normalized, p = diversity_target(attention_map(features))
    shift = (target - normalized) * p / float(channels)
    return features + tf.reshape(shift, [shape[0], shape[1], shape[2], 1])
