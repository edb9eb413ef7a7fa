"""A held-out folder of real photos sent to the exported SavedModel as files (``serving_bytes``).

    python benchmarks/serving_check.py [--workdir=/tmp/ffsd-serving-bench] [--epochs=4]
    python benchmarks/bench.py --serving      # the same, from the main benchmark

What a user does, end to end, through the command lines: writes a folder of real photos (the
CIFAR-10 ``.npz`` of ``../shared/data/cifar10``, 4 classes, scaled up to 64x48 and saved as JPEG,
PNG, grayscale PNG and JPEG, RGBA PNG and BMP files, in ``train/`` and ``val/``), trains on it with
``python -m ffsd_tf.run --dataset=folder`` (FFSD with the recipe, ResNet-8 at ``--image_size=32``),
exports the leader with ``python -m ffsd_tf.export --formats=savedmodel``, then

1. sends every ``val/`` file's **original bytes** through ``serving_bytes`` and compares that
   accuracy with the run's own final evaluation of the leader on ``val/`` (``results.json``):
   target within 0.1 points;
2. for the PNG files, compares ``serving_bytes``' outputs with ``serving_default``'s on the same
   images resized as training resizes them (``ffsd_tf.data.images.load_image``): target the same
   classes and probabilities within 1e-5.

Every step is a child process, so this is what a user's shell would see. The folder, run and export
are kept in ``--workdir`` and rebuilt with ``--fresh``.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402

flags.DEFINE_string("workdir", "/tmp/ffsd-serving-bench", "Where the folder, the run and its export go (kept).")
flags.DEFINE_string("cifar10", os.path.join(ROOT, "..", "shared", "data", "cifar10", "cifar10_yoongikim_jpeg.npz"),
                    "The CIFAR-10 .npz the photos are taken from.")
flags.DEFINE_integer("train_per_class", 500, "Training photos per class.")
flags.DEFINE_integer("val_per_class", 100, "Held-out photos per class.")
flags.DEFINE_integer("epochs", 4, "Training epochs.")
flags.DEFINE_bool("fresh", False, "Delete --workdir's folder, run and export first.")
FLAGS = flags.FLAGS
CLASSES = {0: "airplane", 1: "automobile", 8: "ship", 9: "truck"}
FORMATS = ("jpeg", "png", "png-gray", "png-rgba", "jpeg-gray", "bmp")  # photo i gets FORMATS[i % 6]


def bmp(pixels) -> bytes:
    """A 24-bit BMP file (bottom-up rows, BGR, rows padded to 4 bytes): TensorFlow decodes but cannot write BMP."""
    h, w, _ = pixels.shape
    row = w * 3
    pad = (-row) % 4
    body = b"".join(pixels[y, :, ::-1].tobytes() + b"\0" * pad for y in range(h - 1, -1, -1))
    header = b"BM" + struct.pack("<IHHI", 54 + len(body), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, len(body), 2835, 2835, 0, 0)
    return header + info + body


def encode(photo, kind: str) -> tuple[bytes, str]:
    import numpy as np
    import tensorflow as tf

    gray = np.rint(photo.astype(np.float32) @ np.float32([0.299, 0.587, 0.114]))[..., None].astype(np.uint8)
    if kind == "jpeg":
        return tf.io.encode_jpeg(photo, quality=90).numpy(), ".jpg"
    if kind == "png":
        return tf.io.encode_png(photo).numpy(), ".png"
    if kind == "png-gray":
        return tf.io.encode_png(gray).numpy(), ".png"
    if kind == "png-rgba":
        alpha = np.full(photo.shape[:2] + (1,), 200, np.uint8)
        return tf.io.encode_png(np.concatenate([photo, alpha], axis=-1)).numpy(), ".png"
    if kind == "jpeg-gray":
        return tf.io.encode_jpeg(gray, quality=90).numpy(), ".jpeg"
    return bmp(photo), ".bmp"


def write_folder(root: str) -> None:
    """``root/{train,val}/<class>/<i> photo.<ext>``: CIFAR-10 photos at 64x48 in mixed formats."""
    import numpy as np
    import tensorflow as tf

    marker = os.path.join(root, ".complete")
    if os.path.exists(marker):
        return
    data = np.load(FLAGS.cifar10)
    for split, x, y, n in (("train", data["x_train"], data["y_train"], FLAGS.train_per_class),
                           ("val", data["x_test"], data["y_test"], FLAGS.val_per_class)):
        for label, name in CLASSES.items():
            picked = np.flatnonzero(y == label)[:n]
            photos = tf.cast(tf.clip_by_value(tf.math.rint(tf.image.resize(x[picked].astype(np.float32), [48, 64])),
                                              0, 255), tf.uint8).numpy()
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for i, photo in enumerate(photos):
                encoded, ext = encode(photo, FORMATS[i % len(FORMATS)])
                with open(os.path.join(root, split, name, f"{i:04d} photo{ext}"), "wb") as f:
                    f.write(encoded)
    open(marker, "w").close()


def sh(*args: str) -> None:
    """A child process of this interpreter; its last lines on failure."""
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": ROOT})
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args[:3])} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")


def main(argv):
    del argv
    folder, run_dir = os.path.join(FLAGS.workdir, "photos"), os.path.join(FLAGS.workdir, "run")
    if FLAGS.fresh:
        shutil.rmtree(FLAGS.workdir, ignore_errors=True)
    start = time.time()
    write_folder(folder)
    cpu0 = os.times()
    if not os.path.exists(os.path.join(run_dir, "results.json")):
        shutil.rmtree(run_dir, ignore_errors=True)
        sh("-m", "ffsd_tf.run", "--dataset=folder", f"--data_dir={folder}", "--image_size=32", "--model=resnet8",
           "--num_students=2", f"--epochs={FLAGS.epochs}", f"--milestones={FLAGS.epochs - 1}", "--batch_size=64",
           "--seed=0", f"--output_dir={run_dir}")  # the recipe: the default loss weights
    export_dir = os.path.join(run_dir, "export")
    if not os.path.isdir(os.path.join(export_dir, "1")):
        sh("-m", "ffsd_tf.export", run_dir, "--formats=savedmodel", f"--export_dir={export_dir}")
    cpu1 = os.times()

    import numpy as np
    import tensorflow as tf

    from ffsd_tf.data import images

    run_acc = 100 * json.load(open(os.path.join(run_dir, "results.json")))["accuracy"]["leader"]["final"]
    sigs = tf.saved_model.load(os.path.join(export_dir, "1")).signatures
    names = sorted(os.listdir(os.path.join(folder, "val")))
    paths, labels = [], []
    for label, name in enumerate(names):
        for f in sorted(os.listdir(os.path.join(folder, "val", name))):
            paths.append(os.path.join(folder, "val", name, f))
            labels.append(label)
    labels = np.array(labels)
    files = [open(p, "rb").read() for p in paths]
    served = np.concatenate([sigs["serving_bytes"](images=tf.constant(files[i:i + 100]))["classes"].numpy()[:, 0]
                             for i in range(0, len(files), 100)])
    served_acc = 100 * np.mean(served == labels)
    per_format = {}
    for i, p in enumerate(paths):
        kind = FORMATS[int(os.path.basename(p)[:4]) % len(FORMATS)]
        per_format.setdefault(kind, []).append(served[i] == labels[i])

    png = [i for i, p in enumerate(paths) if p.endswith(".png")]
    data = [files[i] for i in png]
    from_files = sigs["serving_bytes"](images=tf.constant(data))
    resized = np.stack([images.load_image(d, 32, 3).numpy() for d in data]).astype(np.float32)
    from_pixels = sigs["serving_default"](images=tf.constant(resized))
    same_classes = bool((from_files["classes"].numpy() == from_pixels["classes"].numpy()).all())
    max_diff = float(np.abs(from_files["probabilities"].numpy() - from_pixels["probabilities"].numpy()).max())

    print(f"# serving_bytes on a held-out folder  {time.strftime('%Y-%m-%d')}  {platform.node()}  "
          f"{os.cpu_count()} cores  TF {tf.__version__}  python {platform.python_version()}")
    print(f"{len(paths)} held-out files ({', '.join(f'{k} {len(v)}' for k, v in per_format.items())}), "
          f"64x48 photos, 4 classes; FFSD (recipe) ResNet-8 at --image_size=32, {FLAGS.epochs} epochs, seed 0; "
          f"train + export {cpu1.children_user + cpu1.children_system - cpu0.children_user - cpu0.children_system:.0f}"
          f" CPU-s, all {time.time() - start:.0f} s wall")
    print("| measure | value | target |")
    print("|---|---:|---|")
    print(f"| the run's evaluation of the leader on val/ (results.json) | {run_acc:.2f} % | |")
    print(f"| the original files through serving_bytes | {served_acc:.2f} % ({served_acc - run_acc:+.2f}) | within 0.1 |")
    for kind, hits in per_format.items():
        print(f"| ... of which {kind} | {100 * np.mean(hits):.2f} % ({len(hits)} files) | |")
    print(f"| PNG files: serving_bytes vs serving_default on the training resize | classes "
          f"{'equal' if same_classes else 'DIFFER'}, probabilities max |diff| {max_diff:.1e} | equal, < 1e-5 |")
    ok = abs(served_acc - run_acc) <= 0.1 and same_classes and max_diff < 1e-5
    print("serving check:", "PASSED" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    app.run(main)
