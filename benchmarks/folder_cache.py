"""``--dataset=folder``'s prepared cache: preparation throughput, memory, start-up and training speed.

    python benchmarks/folder_cache.py [--workdir=/tmp/ffsd-folder-bench] [--images=20000] [--image_size=64]
    python benchmarks/bench.py --folder      # the same, from the main benchmark

Writes (once, kept in ``--workdir``) a folder of ``--images`` seeded random smooth 256x256 JPEGs in
10 classes (``--validation_split=0.1``) and a quarter of it (hard links), then measures:

1. preparation throughput (images/s) with 1 worker and with 2 (target: 2 workers >= 1.6x one);
2. the peak RSS (``ru_maxrss`` of a child process) of a short training run (a plain Keras resnet8,
   ``--steps`` steps) streaming from the cache, on all images and on the quarter (target: within 10 %);
3. the time from the start of a second run (cache warm) to the end of its first training step
   (target: < 10 s);
4. training images/s streaming from the cache against the same images in memory (target: within 10 %).

Each training run is its own child process, so memory and start-up are measured from a clean process.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
START = time.time()

from absl import app, flags  # noqa: E402

flags.DEFINE_string("workdir", "/tmp/ffsd-folder-bench", "Where the JPEG folders and caches are written (kept).")
flags.DEFINE_integer("images", 20_000, "JPEGs in the full folder.")
flags.DEFINE_integer("image_size", 64, "--image_size of the cache.")
flags.DEFINE_integer("steps", 40, "Timed training steps per run (after 5 warm-up steps).")
flags.DEFINE_integer("batch_size", 128, "Training batch size.")
flags.DEFINE_string("child", None, "Internal: run one training measurement (stream | memory) and print JSON.")
flags.DEFINE_string("data", None, "Internal: the folder of a child run.")
FLAGS = flags.FLAGS
CLASSES = 10
SPLIT = 0.1


def write_folder(root: str, n: int) -> None:
    """``n`` seeded smooth 256x256 JPEGs, ``root/<class>/<i>.jpg`` (skipped when already written)."""
    import numpy as np
    import tensorflow as tf

    marker = os.path.join(root, f".complete-{n}")
    if os.path.exists(marker):
        return
    rng = np.random.default_rng(0)
    for i in range(n):
        label = i % CLASSES
        low = rng.uniform(0, 255, (1, 8, 8, 3)).astype(np.float32)
        image = tf.cast(tf.clip_by_value(tf.image.resize(low, [256, 256], method="bicubic"), 0, 255), tf.uint8)[0]
        path = os.path.join(root, f"c{label}", f"{i:06d}.jpg")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tf.io.write_file(path, tf.io.encode_jpeg(image, quality=90))
    open(marker, "w").close()


def quarter_of(root: str, quarter: str) -> None:
    if os.path.exists(os.path.join(quarter, ".complete")):
        return
    for name in sorted(os.listdir(root)):
        if name.startswith("."):
            continue
        files = sorted(os.listdir(os.path.join(root, name)))
        os.makedirs(os.path.join(quarter, name), exist_ok=True)
        for f in files[: len(files) // 4]:
            target = os.path.join(quarter, name, f)
            if not os.path.exists(target):
                os.link(os.path.join(root, name, f), target)
    open(os.path.join(quarter, ".complete"), "w").close()


def child(mode: str) -> None:
    """One training run: load from the cache, train a resnet8 ``--steps`` steps, print JSON."""
    import resource

    import keras
    import numpy as np

    from ffsd_tf.data import DataBundle, load_dataset
    from ffsd_tf.networks import build_network

    bundle = load_dataset("folder", data_dir=FLAGS.data, image_size=FLAGS.image_size, validation_split=SPLIT,
                          batch_size=FLAGS.batch_size, cache_dir=os.path.join(FLAGS.workdir, "cache"))
    if mode == "memory":
        import dataclasses

        fields = {f.name: getattr(bundle, f.name) for f in dataclasses.fields(DataBundle)}
        bundle = DataBundle(**{**fields, "x_train": np.asarray(bundle.x_train), "x_test": np.asarray(bundle.x_test)})
    net = build_network("resnet8", num_classes=bundle.num_classes, input_shape=bundle.image_shape)
    model = keras.Model(net.input, net.output["logits"])
    model.compile(keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    times = []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            times.append(time.time())

    warmup = 5
    model.fit(bundle.train_stream(0), steps_per_epoch=FLAGS.steps + warmup, epochs=1, verbose=0, callbacks=[Timer()])
    rate = FLAGS.batch_size * (len(times) - warmup) / (times[-1] - times[warmup - 1])
    print(json.dumps({"first_step_s": times[0] - START, "images_per_s": rate, "train_size": bundle.train_size,
                      "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run_child(mode: str, data: str) -> dict:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), f"--child={mode}", f"--data={data}",
                           f"--workdir={FLAGS.workdir}", f"--image_size={FLAGS.image_size}", f"--steps={FLAGS.steps}",
                           f"--batch_size={FLAGS.batch_size}"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT}, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"child {mode} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv):
    del argv
    if FLAGS.child:
        return child(FLAGS.child)
    import tensorflow as tf

    from ffsd_tf.data import folder

    full, quarter = os.path.join(FLAGS.workdir, "full"), os.path.join(FLAGS.workdir, "quarter")
    write_folder(full, FLAGS.images)
    quarter_of(full, quarter)
    rates = {}
    for workers in (1, 2):
        start = time.time()
        folder.load_folder(full, image_size=FLAGS.image_size, validation_split=SPLIT, rebuild_cache=True,
                           cache_dir=os.path.join(FLAGS.workdir, "cache"), workers=workers)
        rates[workers] = FLAGS.images / (time.time() - start)
    folder.load_folder(quarter, image_size=FLAGS.image_size, validation_split=SPLIT,
                       cache_dir=os.path.join(FLAGS.workdir, "cache"))
    runs = {name: run_child(mode, data) for name, mode, data in
            (("full", "stream", full), ("quarter", "stream", quarter), ("memory", "memory", full))}
    print(f"# folder cache benchmark  {time.strftime('%Y-%m-%d')}  {platform.node()}  {os.cpu_count()} cores  "
          f"TF {tf.__version__}  python {platform.python_version()}")
    print(f"{FLAGS.images} JPEGs 256x256 -> --image_size={FLAGS.image_size}, resnet8, batch {FLAGS.batch_size}, "
          f"{FLAGS.steps} timed steps")
    print("| measure | value | target |")
    print("|---|---:|---|")
    print(f"| preparation, 1 worker | {rates[1]:.0f} images/s | |")
    print(f"| preparation, 2 workers | {rates[2]:.0f} images/s ({rates[2] / rates[1]:.2f}x) | >= 1.6x |")
    print(f"| peak RSS, training on {runs['full']['train_size']} images (cache) | {runs['full']['max_rss_mb']:.0f} MB | |")
    print(f"| peak RSS, training on {runs['quarter']['train_size']} images (cache) | "
          f"{runs['quarter']['max_rss_mb']:.0f} MB ({runs['full']['max_rss_mb'] / runs['quarter']['max_rss_mb'] - 1:+.1%}"
          " full vs quarter) | within 10 % |")
    print(f"| peak RSS, the same images in memory | {runs['memory']['max_rss_mb']:.0f} MB | |")
    print(f"| start to end of first step, cache warm | {runs['full']['first_step_s']:.1f} s | < 10 s |")
    print(f"| training, streaming from the cache | {runs['full']['images_per_s']:.0f} images/s | |")
    print(f"| training, in memory | {runs['memory']['images_per_s']:.0f} images/s "
          f"(stream/memory {runs['full']['images_per_s'] / runs['memory']['images_per_s']:.2f}x) | within 10 % |")


if __name__ == "__main__":
    app.run(main)
