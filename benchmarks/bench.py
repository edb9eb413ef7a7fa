"""Throughput of the FFSD training step against one network trained alone, in one process.

    python benchmarks/bench.py [--model=resnet32] [--steps=15] [--batch_size=128]
    python benchmarks/bench.py --folder    # the --dataset=folder cache (benchmarks/folder_cache.py)
    python benchmarks/bench.py --serving   # held-out photos through serving_bytes (benchmarks/serving_check.py)

``make bench`` runs all three.

Reports images/s of (a) one network trained with a plain Keras ``fit`` (CE, SGD), (b) the FFSD
step with n common students (n+1 networks + fusion + decoders), (c) the same with
``jit_compile``, (d) the input pipeline alone (synthetic CIFAR-shaped data with the paper's
augmentation), and the measured cost ratio b/a next to the FLOPs ratio. Every number comes from
this one run, so the ratios are comparable whatever the machine's load.
"""

from __future__ import annotations

import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

flags.DEFINE_string("model", "resnet32", "Backbone.")
flags.DEFINE_integer("num_students", 2, "Common students.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_integer("num_classes", 100, "Classes.")
flags.DEFINE_integer("steps", 15, "Timed steps per configuration.")
flags.DEFINE_integer("warmup", 3, "Untimed steps first (tracing, allocation).")
flags.DEFINE_bool("jit", True, "Also time the FFSD step with jit_compile.")
flags.DEFINE_bool("folder", False, "Instead: the --dataset=folder cache benchmark (benchmarks/folder_cache.py: "
                  "preparation throughput, peak RSS, start-up, streaming vs in-memory training).")
flags.DEFINE_bool("serving", False, "Instead: held-out photo files through the SavedModel's serving_bytes against the "
                  "run's own evaluation (benchmarks/serving_check.py).")
FLAGS = flags.FLAGS


class StepTimer:
    def __init__(self, warmup):
        import keras

        outer = self

        class _CB(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                outer.times.append(time.perf_counter())

        self.callback = _CB()
        self.times: list[float] = []
        self.warmup = warmup

    def images_per_second(self, batch_size):
        t = self.times[self.warmup - 1 :]
        return batch_size * (len(t) - 1) / (t[-1] - t[0])


def synthetic_batches(batch_size, num_classes):
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch_size, 32, 32, 3)).astype("float32")
    y = rng.integers(0, num_classes, batch_size).astype("int32")
    return tf.data.Dataset.from_tensors((x, y)).repeat()


def time_single(steps, warmup):
    import keras

    from ffsd_tf.networks import build_network
    from ffsd_tf.optimizers import TorchSGD

    net = build_network(FLAGS.model, num_classes=FLAGS.num_classes)
    model = keras.Model(net.input, net.output["logits"])
    model.compile(TorchSGD(0.1, weight_decay=1e-4), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=False)
    timer = StepTimer(warmup)
    model.fit(synthetic_batches(FLAGS.batch_size, FLAGS.num_classes), steps_per_epoch=steps + warmup, epochs=1,
              verbose=0, callbacks=[timer.callback])
    return timer.images_per_second(FLAGS.batch_size), net


def time_ffsd(steps, warmup, jit):
    from ffsd_tf.optimizers import TorchAdam, TorchSGD
    from ffsd_tf.trainer import FFSD, FFSDConfig

    model = FFSD(FFSDConfig(model=FLAGS.model, num_classes=FLAGS.num_classes, num_students=FLAGS.num_students))
    model.set_epoch(10)
    opts = {r: TorchSGD(0.1, weight_decay=1e-4) for r in ("students", "leader", "fusion")}
    opts["decoders"] = TorchAdam(1e-3, weight_decay=1e-4)
    model.compile(opts, jit_compile=jit)
    timer = StepTimer(warmup)
    model.fit(synthetic_batches(FLAGS.batch_size, FLAGS.num_classes), steps_per_epoch=steps + warmup, epochs=1,
              verbose=0, callbacks=[timer.callback])
    return timer.images_per_second(FLAGS.batch_size), model


def time_pipeline(batches=60):
    from ffsd_tf.data import load_dataset

    bundle = load_dataset("synthetic", batch_size=FLAGS.batch_size, synthetic_classes=FLAGS.num_classes,
                          synthetic_train=8192, synthetic_test=128, image_size=32)
    it = iter(bundle.train_stream(0))
    for _ in range(5):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return FLAGS.batch_size * batches / (time.perf_counter() - start)


def main(argv):
    del argv
    if FLAGS.folder or FLAGS.serving:  # their own scripts and flags (runnable alone), in child processes
        import subprocess

        name = "folder_cache.py" if FLAGS.folder else "serving_check.py"
        raise SystemExit(subprocess.call([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), name)]))
    import tensorflow as tf

    from ffsd_tf.flops import ffsd_step_flops, model_flops

    single, net = time_single(FLAGS.steps, FLAGS.warmup)
    ffsd, model = time_ffsd(FLAGS.steps, FLAGS.warmup, jit=False)
    ffsd_jit = time_ffsd(FLAGS.steps, FLAGS.warmup, jit=True)[0] if FLAGS.jit else float("nan")
    pipeline = time_pipeline()
    flops_single = 3 * model_flops(net)
    flops_ffsd = ffsd_step_flops(model)["train_step"]
    flops_ratio = flops_ffsd / flops_single
    cost_ratio = single / ffsd
    print(f"# FFSD benchmark  {time.strftime('%Y-%m-%d')}  {platform.node()}  {os.cpu_count()} cores  "
          f"TF {tf.__version__}  python {platform.python_version()}")
    print(f"model={FLAGS.model} n={FLAGS.num_students} batch={FLAGS.batch_size} classes={FLAGS.num_classes} "
          f"steps={FLAGS.steps} (+{FLAGS.warmup} warm-up)")
    print("| configuration | images/s |")
    print("|---|---:|")
    print(f"| (a) one {FLAGS.model}, plain Keras fit | {single:.1f} |")
    print(f"| (b) FFSD step ({FLAGS.num_students} students + leader + fusion + {len(model.sd_decoders)} decoders) | {ffsd:.1f} |")
    print(f"| (c) FFSD step, jit_compile | {ffsd_jit:.1f} |")
    print(f"| (d) input pipeline alone | {pipeline:.1f} |")
    print()
    print(f"FLOPs per image: single train step {flops_single / 1e6:.1f} M, FFSD step {flops_ffsd / 1e6:.1f} M")
    print(f"cost ratio b/a = {cost_ratio:.2f}x   FLOPs ratio = {flops_ratio:.2f}x   "
          f"cost vs FLOPs-ideal = {cost_ratio / flops_ratio:.2f}x   pipeline / FFSD step = {pipeline / ffsd:.1f}x")


if __name__ == "__main__":
    app.run(main)
