"""Does the leader follow its teacher? Each classifier of a run against the leader's Eq. 14 teacher, at a checkpoint.

    python benchmarks/teacher_agreement.py ~/ffsd-runs/budget/c100_r8_20k_15ep_x2_ffsd_recipe_s0

For the run's newest readable checkpoint, on its test set and on its training images (not
augmented, in inference mode), this prints per classifier (common students, fusion classifier,
leader, and their weight averages where the run kept them): its accuracy, its top-1 agreement with
the leader's teacher (the fusion classifier; with ``--ema_teacher`` the averaged one), the mean
T^2 KL(teacher || classifier) at the run's temperature (Eq. 14's term, unmasked), and its accuracy
on the samples the teacher gets right and on those it gets wrong. Nothing is written; the run
directory is only read.

RESULTS.md (CIFAR-100 at CPU scale) uses it to tell whether the leader is closer to its teacher
than the network trained alone (in the recipe, common student 1 is that network).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.leader_gradients import restore_leader_run  # noqa: E402


def all_logits(model, images) -> dict:
    """name -> float32 logits of every classifier of the cohort and its weight averages, inference mode."""
    import tensorflow as tf

    logits = model.eval_logits(images)
    if model.averages:
        logits.update(model.averaged_logits(images))
    return {k: tf.cast(v, tf.float32) for k, v in logits.items()}


def agreement(model, dataset, teacher: str, temperature: float) -> dict:
    """name -> (accuracy, agreement with ``teacher``, mean T^2 KL(teacher || name), accuracy where
    the teacher is right, accuracy where it is wrong), in % (the KL in nats), over ``dataset``."""
    import numpy as np
    import tensorflow as tf

    sums, count, right = {}, 0, 0
    for images, labels in dataset:
        z = all_logits(model, images)
        labels = tf.cast(labels, tf.int64)
        t = z[teacher]
        t_pred = tf.argmax(t, -1)
        t_ok = tf.cast(tf.equal(t_pred, labels), tf.float32)
        p_t = tf.nn.softmax(t / temperature)
        log_p_t = tf.nn.log_softmax(t / temperature)
        for name, logits in z.items():
            pred = tf.argmax(logits, -1)
            ok = tf.cast(tf.equal(pred, labels), tf.float32)
            kl = tf.reduce_sum(p_t * (log_p_t - tf.nn.log_softmax(logits / temperature)), -1) * temperature ** 2
            s = sums.setdefault(name, np.zeros(5))
            s += [float(tf.reduce_sum(ok)), float(tf.reduce_sum(tf.cast(tf.equal(pred, t_pred), tf.float32))),
                  float(tf.reduce_sum(kl)), float(tf.reduce_sum(ok * t_ok)), float(tf.reduce_sum(ok * (1 - t_ok)))]
        count += int(labels.shape[0])
        right += int(tf.reduce_sum(t_ok))
    wrong = max(count - right, 1)
    return {k: (100 * s[0] / count, 100 * s[1] / count, s[2] / count, 100 * s[3] / max(right, 1), 100 * s[4] / wrong)
            for k, s in sums.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a training run directory with a leader and a fusion module")
    args = parser.parse_args(argv)
    restored = restore_leader_run(args.run_dir)
    if restored is None:
        return 2
    model, bundle, checkpoint = restored
    teacher = "fusion_ema" if model.config.ema_teacher else "fusion"
    temperature = float(model.config.temperature)
    train = bundle.raw("train").batch(bundle.eval_batch_size).map(lambda x, y: (bundle.normalize(x), y))
    print(f"{checkpoint} (epoch {int(model.epoch.numpy())}); the leader's teacher: {teacher}, T = {temperature:g}")
    for split, dataset in (("test", bundle.test_dataset()), ("train, not augmented", train)):
        rows = agreement(model, dataset, teacher, temperature)
        print(f"\n{split}:\n\n| classifier | accuracy | agreement with {teacher} | T² KL({teacher} ‖ ·) "
              f"| accuracy where {teacher} is right | where it is wrong |\n|---|---:|---:|---:|---:|---:|")
        for name, (acc, agree, kl, acc_right, acc_wrong) in rows.items():
            print(f"| {name} | {acc:.2f} | {agree:.2f} | {kl:.3f} | {acc_right:.2f} | {acc_wrong:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
