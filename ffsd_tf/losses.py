"""Every FFSD loss term, as the authors' code computes it (see docs/paper_vs_code.md).

Feature-level terms use per-sample L2-normalised maps and the *mean squared* difference
(the paper prints an un-squared L2 norm; the released lambdas only make sense with the mean).
Cross-model signals are stop-gradiented here where a function's contract says "target", so a
caller cannot forget the ``.detach()`` of the authors' code.
"""

from __future__ import annotations

import tensorflow as tf

from ffsd_tf.attention import attention_map, diversity_target, flatten, loss_float, normalize


def cross_entropy(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Mean softmax cross-entropy (L_CE of Eqs. 2, 4, 14)."""
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int32), logits=loss_float(logits))
    )


def distillation_kl(student_logits: tf.Tensor, teacher_logits: tf.Tensor, temperature: float,
                    sample_mask: tf.Tensor | None = None) -> tf.Tensor:
    """``T^2 * KL(p_teacher || p_student)`` at temperature T (Eq. 3 times T^2; KLDivLoss batchmean).

    Sum over classes, mean over the batch; the teacher is stop-gradiented. Written with
    log-softmax on both sides (no probability clipping, unlike ``keras.losses.KLDivergence``).
    ``sample_mask`` (0/1 per sample; not in the paper) keeps only those samples' KL and still
    divides by the batch size, so a sample's pull does not grow when fewer samples are kept.
    """
    t = float(temperature)
    teacher = tf.stop_gradient(loss_float(teacher_logits)) / t
    log_p_teacher = tf.nn.log_softmax(teacher, axis=-1)
    log_p_student = tf.nn.log_softmax(loss_float(student_logits) / t, axis=-1)
    kl = tf.reduce_sum(tf.exp(log_p_teacher) * (log_p_teacher - log_p_student), axis=-1)
    if sample_mask is not None:
        kl = kl * tf.stop_gradient(tf.cast(sample_mask, kl.dtype))
    return t * t * tf.reduce_mean(kl)


def teacher_correct(teacher_logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """1.0 where the teacher's top class is the label, else 0.0 (per sample; no gradient)."""
    top = tf.argmax(teacher_logits, axis=-1, output_type=tf.int32)  # argmax has no gradient
    return tf.cast(tf.equal(top, tf.cast(tf.reshape(labels, tf.shape(top)), tf.int32)), tf.float32)


def normalized_mse(x: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """``mean((n(x) - n(target))^2)`` over batch and elements; target stop-gradiented.

    The authors' ``attention_loss``/``fusion_loss``: the feature-level distance used by Eqs. 5,
    10, 11 and 13 (on attention maps, or on raw feature maps for Eq. 10's second term).
    """
    return tf.reduce_mean(tf.square(normalize(x) - tf.stop_gradient(normalize(target))))


def attention_loss(features: tf.Tensor, target_features: tf.Tensor) -> tf.Tensor:
    """normalized_mse of the two feature maps' attention maps (Eq. 7)."""
    return normalized_mse(attention_map(features), attention_map(target_features))


def diversity_loss(features: tf.Tensor, previous_features: tf.Tensor) -> tf.Tensor:
    """Eq. (9) as coded: ``mean((n(A_i) - Abar_{i-1})^2)`` with Abar from Eq. (8), not re-normalised.

    ``previous_features`` is the previous common student's F^L (stop-gradiented here).
    """
    target, _, _ = diversity_target(attention_map(tf.stop_gradient(previous_features)))
    return tf.reduce_mean(tf.square(normalize(attention_map(features)) - target))


def l2_diversity_loss(features: list, other_features: list) -> tf.Tensor:
    """Eq. (6) for one student against one peer: ``-(1/M) sum_m mean_b ||F^m - F_peer^m||_2``.

    The ablation of Table IV ("L2"); the peer's maps are stop-gradiented. The trainer sums it
    over every peer j != i, as Eq. (6) sums over ordered pairs.
    """
    terms = [
        tf.reduce_mean(tf.norm(flatten(f) - tf.stop_gradient(flatten(g)), axis=1))
        for f, g in zip(features, other_features)
    ]
    return -tf.add_n(terms) / float(len(terms))


def sd_target_loss(features: list, decoded_targets: list) -> tf.Tensor:
    """Shallow-layer self-distillation terms of Eqs. (11) and (13) as coded.

    ``sum_m normalized_mse(A(F^m), A(S^m))`` over the M-1 shallow maps, the decoder outputs S^m
    being targets (stop-gradiented: the decoder ran in inference mode and is not moved).
    """
    return tf.add_n([attention_loss(f, tf.stop_gradient(s)) for f, s in zip(features, decoded_targets)])


def decoder_loss(decoded: list, real_features: list) -> tf.Tensor:
    """Eq. (10) as coded (the printed equation compares a map with itself, a typo).

    ``sum_m [normalized_mse(S^m, F^m) + normalized_mse(A(S^m), A(F^m))]``: the decoder output of
    block m against the same network's real map F^m (stop-gradiented), feature and attention
    terms with alpha = 1. Only the decoder receives gradient.
    """
    return tf.add_n(
        [normalized_mse(s, f) + attention_loss(s, f) for s, f in zip(decoded, real_features)]
    )


def attention_transfer_loss(features: list, teacher_features: list) -> tf.Tensor:
    """Attention transfer (Zagoruyko & Komodakis, the paper's [9]; Table II's AT row).

    ``sum_m mean((n(A(F^m)) - n(A(F_T^m)))^2)`` over the M stage outputs, with the same attention
    map and normalisation as Eq. (7) (channel mean of F^2, the reference code's ``at``), the
    teacher's maps stop-gradiented. Their beta/2 (= 500) is the loss weight ``teacher_at``.
    """
    return tf.add_n([attention_loss(f, tf.stop_gradient(g)) for f, g in zip(features, teacher_features)])
