"""What the leader costs (issue 28): each part's share of the FFSD step, and the step for n = 1, 2, 3.

    python benchmarks/cohort_cost.py [--model=resnet8] [--num_classes=100] [--steps=15] [--rounds=2]

Times the training step (``FFSD.fit`` on synthetic CIFAR-shaped batches, the recipe's weights at
epoch 10) of cohorts built up one part at a time, with n = ``--num_students`` common students:

* ``CE``: one network alone (n = 1, no leader, no diversity, no decoders): the baseline;
* ``students``: n common students with the attention diversity loss (Eqs. 8-11), no leader;
* ``+ leader``: the leader, taught by the students' mean logits (``fusion=False``);
* ``+ fusion``: the fusion module and its classifier as the leader's teacher (Eqs. 12-14);
* ``+ decoders``: the self-distillation decoders (Eq. 10, ``self_distillation=both``): the full FFSD step;

then the full step for n = 1, 2, 3 (n = 1 has no student decoder: it needs two students). Each part's
share is the difference of consecutive rows over the full step. Configurations are timed in turn,
``--rounds`` times (the median per configuration is kept), all in this one process, so the shares hold
whatever the machine's load. Both wall time and this process' CPU time per step are reported (CPU
time is the steadier figure on a shared machine).
"""

from __future__ import annotations

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (its flags: --model, --batch_size, --num_classes, --steps, --warmup)

from absl import app, flags  # noqa: E402

flags.DEFINE_integer("rounds", 2, "Times each configuration is timed (in turn); the median is kept.")
FLAGS = flags.FLAGS


def configurations(n: int) -> list[tuple[str, dict]]:
    base = dict(mutual_learning=False)  # the recipe: no mutual KL between common students
    return [
        ("CE (one network alone)", dict(num_students=1, leader=False, diversity="none", self_distillation="none",
                                        mutual_learning=False)),
        (f"students (n={n}, diversity)", dict(base, num_students=n, leader=False, self_distillation="none")),
        ("+ leader (mean-logit teacher)", dict(base, num_students=n, fusion=False, self_distillation="none")),
        ("+ fusion module", dict(base, num_students=n, self_distillation="none")),
        ("+ decoders (full FFSD step)", dict(base, num_students=n, self_distillation="both")),
    ] + [(f"full FFSD step, n={k}", dict(base, num_students=k, self_distillation="both")) for k in (1, 2, 3) if k != n]


def time_config(options: dict) -> tuple[float, float]:
    """Seconds per step (wall, process CPU) of the FFSD step built from ``options``."""
    import keras

    from ffsd_tf.optimizers import TorchAdam, TorchSGD
    from ffsd_tf.recipes import RECIPE_LOSS_WEIGHTS  # noqa: F401  (the weights FFSD's default resolves)
    from ffsd_tf.trainer import FFSD, FFSDConfig

    config = FFSDConfig(model=FLAGS.model, num_classes=FLAGS.num_classes, **options)
    model = FFSD(config)
    model.set_epoch(10)
    opts = {r: TorchSGD(0.1, weight_decay=1e-4) for r in model.active_roles if r != "decoders"}
    if "decoders" in model.active_roles:
        opts["decoders"] = TorchAdam(1e-3, weight_decay=1e-4)
    model.compile(opts)
    wall, cpu = [], []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            wall.append(time.perf_counter())
            cpu.append(time.process_time())

    steps, warmup = FLAGS.steps, FLAGS.warmup
    model.fit(bench.synthetic_batches(FLAGS.batch_size, FLAGS.num_classes), steps_per_epoch=steps + warmup,
              epochs=1, verbose=0, callbacks=[Clock()])
    timed = len(wall) - warmup
    return (wall[-1] - wall[warmup - 1]) / timed, (cpu[-1] - cpu[warmup - 1]) / timed


def main(argv):
    del argv
    import platform

    import tensorflow as tf

    n = bench.FLAGS.num_students
    configs = configurations(n)
    samples = {name: [] for name, _ in configs}
    for _ in range(FLAGS.rounds):
        for name, options in configs:
            samples[name].append(time_config(options))
    wall = {k: statistics.median(s[0] for s in v) for k, v in samples.items()}
    cpu = {k: statistics.median(s[1] for s in v) for k, v in samples.items()}
    print(f"# cohort cost  {time.strftime('%Y-%m-%d')}  {platform.node()}  {os.cpu_count()} cores  TF {tf.__version__}")
    print(f"model={FLAGS.model} classes={FLAGS.num_classes} batch={FLAGS.batch_size} steps={FLAGS.steps} "
          f"(+{FLAGS.warmup} warm-up) rounds={FLAGS.rounds} (median)")
    print("| configuration | ms/step (wall) | ms/step (CPU) | CPU x CE | part's share of the full step (CPU) |")
    print("|---|---:|---:|---:|---:|")
    names = [name for name, _ in configs]
    full = cpu[names[4]]
    for i, name in enumerate(names):
        share = f"{100 * (cpu[name] - cpu[names[i - 1]]) / full:.0f} %" if 1 <= i <= 4 else ""
        if i == 1:
            share = f"{100 * cpu[name] / full:.0f} %"
        print(f"| {name} | {1000 * wall[name]:.0f} | {1000 * cpu[name]:.0f} | {cpu[name] / cpu[names[0]]:.2f} | {share} |")


if __name__ == "__main__":
    app.run(main)
