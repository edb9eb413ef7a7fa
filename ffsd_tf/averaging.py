"""Exponential moving averages of a network's weights (not in the paper; issue 28).

``FFSDConfig.ema_decay > 0`` keeps, beside every classifier of the cohort (common students, fusion
module, leader), a copy whose every weight (kernels, biases, BatchNorm scales and statistics) follows

    avg_t = d_t * avg_{t-1} + (1 - d_t) * w_t,     d_t = min(ema_decay, (1 + t) / (10 + t))

after each training step t = 0, 1, ... (``decay_at``; the warm-up of Tarvainen & Valpola's mean
teacher, so an early average does not hold on to the random initial weights). The averages are
evaluated beside the live networks (``<name>_ema/acc``) and checkpointed with them; with
``ema_teacher`` the averaged cohort (its students and fusion classifier) is the leader's teacher
in Eq. 14, as peer collaborative learning's temporal mean networks (Wu & Gong, AAAI 2021) are.

A weight average is the fair counterpart for the network trained alone: a CE run with the same
``ema_decay`` reports ``student1_ema`` beside ``student1`` (as Keras' ``use_ema`` would give it).
"""

from __future__ import annotations

import keras
import tensorflow as tf

WARMUP = 10.0  # d_t = min(decay, (1 + t) / (WARMUP + t))


def decay_at(step, decay: float):
    """d_t of the module docstring for the 0-based update ``step`` (a tensor or a number)."""
    t = tf.cast(step, tf.float32)
    return tf.minimum(tf.constant(decay, tf.float32), (1.0 + t) / (WARMUP + t))


def weight_pairs(average: keras.Model, live: keras.Model) -> list[tuple]:
    """(average variable, live variable) for every weight of two networks built alike; ValueError
    if they differ in count or shape (a copy built from another architecture)."""
    a, w = average.weights, live.weights
    if len(a) != len(w) or any(tuple(x.shape) != tuple(y.shape) for x, y in zip(a, w)):
        raise ValueError(f"{average.name} is not a copy of {live.name}: their weights differ")
    return list(zip(a, w))


def copy_weights(pairs) -> None:
    """Every average := its live weight (the start of the average)."""
    for avg, live in pairs:
        avg.assign(live)


def update(pairs, decay) -> None:
    """One step of every average: avg := decay * avg + (1 - decay) * live (``decay`` = d_t)."""
    for avg, live in pairs:
        d = tf.cast(decay, avg.dtype)
        avg.assign(d * avg + (1.0 - d) * tf.cast(live, avg.dtype))
