"""``--dataset=folder``: your own images, one subfolder per class.

Layouts (class names are the subfolder names, sorted; label i = the i-th name)::

    DIR/train/<class>/*.png   and   DIR/val/<class>/...   (or DIR/test/<class>/...; val/ wins if both exist)
    DIR/<class>/*.jpg         with  --validation_split=0.2

In the single-folder layout ``validation_split`` of every class's images (sorted by path, then
permuted by a fixed seed, ``SPLIT_SEED``) are held out: the split is stratified and does not move
with ``--seed``, so runs with different seeds are evaluated on the same images. It is refused with
``train/``+``val/`` folders (the split is already given).

Files: ``.jpg .jpeg .png .bmp .gif`` (any case; a class folder is searched recursively, without
following links to folders; other and hidden files are ignored; a GIF gives its first frame),
decoded and resized to ``image_size`` x ``image_size`` (default ``DEFAULT_IMAGE_SIZE``) by the rules
of :mod:`ffsd_tf.data.images` (bilinear with antialiasing, the aspect ratio not kept, rounded to
uint8; the exported ``serving_bytes`` signature applies the same ops). An image over
``images.MAX_IMAGE_PIXELS`` pixels is refused by its own error before it is decoded. Channels come
from the data: 1 when every image (of both splits) is grayscale, else 3 (grayscale images are then
repeated to RGB; an alpha channel is dropped). Mean/std: per channel over the training images,
from exact integer sums (``base.channel_stats``'s values).

The prepared cache (always: a folder is never held in memory). The first run decodes and resizes
every file once, on all cores (a tf.data pipeline; a bar with images/s and ETA on a terminal, one
line otherwise), into a cache entry (format: ``cache.py``) that later runs, resumes, export and
visualize read instead of the images. Training reads each batch's rows from it (``pipeline.
CachedBundle``: the same order, augmentation and batches as in memory), so memory does not grow with
the number of images; both splits stay on disk.

* Where: ``--cache_dir`` (``cache_dir=``), default ``<data_dir>/.ffsd-cache`` when the data folder
  is writable (hidden, so never taken for a class), else ``$XDG_CACHE_HOME/ffsd-tf`` (default
  ``~/.cache/ffsd-tf``). An entry ``<image_size>px-<split>-<hash of the folder's path>`` per folder,
  image size and split; another image size is another entry (delete old ones to free the space).
* Key: the relative path, byte size and modification time of every file of both splits, the image
  size, the split (train/val folders or the ``validation_split``), the cache format and the
  TensorFlow version (decoders). A different key prepares the entry again, after one line naming
  what changed (added / removed / modified files, counts and the first names).
* Damage (a truncated or missing shard, an unreadable or inconsistent index): one DataError line
  naming the entry, to delete it or pass ``--rebuild_cache`` (``rebuild_cache=True``), which
  prepares it again now. Only files inside the cache dir are ever written or removed; a new entry
  is written to a temporary folder and renamed into place (an interrupted preparation leaves no
  half cache), under a lock file, so concurrent runs prepare it once.

A file that cannot be read or decoded (corrupt, truncated, not an image) stops the load with one
DataError naming the file; it is never skipped silently. Remove or fix it and run again.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import shutil
import sys
import time

import numpy as np

from ffsd_tf.data import cache, images
from ffsd_tf.data.base import Source, error_summary
from ffsd_tf.data.idx import DataError

IMAGE_EXTENSIONS = images.IMAGE_EXTENSIONS
SPLIT_DIRS = ("val", "test")  # the evaluation folder next to train/, first found
DEFAULT_IMAGE_SIZE = 32  # the CIFAR networks' input size
SPLIT_SEED = 20240917  # fixed: the held-out images do not depend on --seed
CACHE_DIRNAME = ".ffsd-cache"  # the default cache, inside the data folder (hidden: not a class)


def _subfolders(path: str) -> list[str]:
    return sorted(d for d in os.listdir(path) if not d.startswith(".") and os.path.isdir(os.path.join(path, d)))


def _image_files(folder: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder):  # links to folders are not followed: no cycles
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [
            os.path.join(root, f) for f in files if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return sorted(found)


def _class_files(root: str, classes: list[str] | None = None) -> dict[str, list[str]]:
    """``{class name: its image files}`` of a split folder; every class folder must hold an image."""
    names = _subfolders(root)
    if not names:
        raise DataError(
            f"{root} has no class subfolders; put each class's images in their own folder ({root}/<class>/*.png)"
        )
    if classes is not None:
        extra = [n for n in names if n not in classes]
        if extra:
            raise DataError(f"{root} has classes that the training folder lacks: {', '.join(extra[:5])}; "
                            "add them to train/ or remove them")
    files = {n: _image_files(os.path.join(root, n)) for n in names}
    empty = [n for n, f in files.items() if not f]
    if empty:
        raise DataError(
            f"{os.path.join(root, empty[0])} holds no {'/'.join(e[1:].upper() for e in IMAGE_EXTENSIONS[1:])} "
            f"images ({len(empty)} empty class folder(s)); add images or remove the folder"
        )
    return files


def _split(files: dict[str, list[str]], fraction: float) -> tuple[list, list]:
    """Stratified hold-out: ``round(fraction * n)`` images of each class (at least one stays in train)."""
    rng = np.random.default_rng(SPLIT_SEED)
    train, test = [], []
    for label, name in enumerate(sorted(files)):
        paths = files[name]
        order = rng.permutation(len(paths))
        held = min(int(round(fraction * len(paths))), len(paths) - 1)
        test += [(paths[i], label) for i in sorted(order[:held])]
        train += [(paths[i], label) for i in sorted(order[held:])]
    return train, test


def _decode(path: str, size: int):
    """uint8 [size, size, 1 or 3] of the image file ``path`` (``images.decode_resize``: the rules the
    SavedModel's ``serving_bytes`` applies too); DataError naming the file if unreadable or too large."""
    import tensorflow as tf

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"cannot read image {path} ({e.strerror or e}); fix its permissions or remove it") from None
    try:
        pixels = int(images.header_pixels(data))
    except tf.errors.OpError:
        pixels = 0  # an unreadable header: decoding below names the file as corrupt
    if pixels > images.MAX_IMAGE_PIXELS:
        raise DataError(f"image {path} has {pixels:,} pixels (width x height), over the limit of "
                        f"{images.MAX_IMAGE_PIXELS:,}; downscale it (e.g. to 4000 px a side) or remove it")
    try:
        return images.decode_resize(data, size).numpy()
    except (tf.errors.OpError, ValueError) as e:
        raise DataError(f"cannot decode image {path} ({error_summary(e)[:120]}); it is corrupt or not an image: "
                        "fix or remove it") from None


def _workers(workers: int | None) -> int:
    if workers:
        return max(1, int(workers))
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class _Progress:
    """The preparation's progress on stderr: a bar with images/s and ETA on a terminal; otherwise one
    line when done (logs get no redraws)."""

    def __init__(self, total: int, what: str, stream=None):
        self.stream = stream or sys.stderr
        try:
            self.bar = bool(self.stream.isatty())
        except (AttributeError, ValueError, OSError):
            self.bar = False
        self.total, self.what, self.start, self.shown = total, what, time.time(), 0.0

    def update(self, done: int) -> None:
        now = time.time()
        if not self.bar or (now - self.shown < 0.2 and done < self.total):
            return
        self.shown = now
        rate = done / max(now - self.start, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else 0.0
        filled = int(20 * done / max(self.total, 1))
        self.stream.write(f"\r{self.what} [{'=' * filled}{'.' * (20 - filled)}] {done}/{self.total} "
                          f"{rate:.0f} images/s ETA {int(eta) // 60}:{int(eta) % 60:02d} ")
        self.stream.flush()

    def done(self, where: str) -> None:
        took = time.time() - self.start
        prefix = "\r" if self.bar else ""
        self.stream.write(f"{prefix}{self.what}: {self.total} images in {took:.1f}s "
                          f"({self.total / max(took, 1e-9):.0f} images/s) -> {where}\n")
        self.stream.flush()


DECODE_BATCH = 64


def _decoded(paths: list, size: int, workers: int):
    """Batches of ``(uint8 [b, S, S, 3], gray [b], sum [b, 3], sum of squares [b, 3])`` of the files, in
    order, decoded on ``workers`` threads of a tf.data pipeline (``images.check_size``,
    ``decode_resize``, then ``to_channels(..., 3)``; intra-op parallelism 1, so ``workers`` is the
    number of cores used)."""
    import tensorflow as tf

    @tf.autograph.experimental.do_not_convert  # plain TF ops: nothing to convert (and no autograph warnings)
    def load(path):
        image = images.decode_resize(images.check_size(tf.io.read_file(path)), size)
        gray = tf.equal(tf.shape(image)[-1], 1)
        image = tf.ensure_shape(images.to_channels(image, 3), [size, size, 3])
        x = tf.cast(image, tf.int64)
        return image, gray, tf.reduce_sum(x, axis=[0, 1]), tf.reduce_sum(x * x, axis=[0, 1])

    ds = tf.data.Dataset.from_tensor_slices(tf.constant(paths, tf.string))
    ds = ds.map(load, num_parallel_calls=workers, deterministic=True).batch(DECODE_BATCH).prefetch(2)
    options = tf.data.Options()
    options.threading.private_threadpool_size = workers
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options)


def _file_table(items: list, root: str) -> list:
    """``[relative path, size, mtime_ns]`` of each file (what the cache key is made of)."""
    table = []
    for path, _ in items:
        try:
            st = os.stat(path)
        except OSError as e:
            raise DataError(f"cannot read image {path} ({e.strerror or e}); fix its permissions or remove it") from None
        table.append([os.path.relpath(path, root), st.st_size, st.st_mtime_ns])
    return table


def _changes(old: dict, new: dict) -> str:
    """``2 added (a.png, b.png), 1 removed (c.png), 1 modified (d.png)`` between two file tables."""
    parts = []
    for split in cache.SPLITS:
        before = {row[0]: tuple(row[1:]) for row in old.get(split, [])}
        after = {row[0]: tuple(row[1:]) for row in new[split]}
        for what, names in (("added", sorted(after.keys() - before.keys())),
                            ("removed", sorted(before.keys() - after.keys())),
                            ("modified", sorted(k for k in after.keys() & before.keys() if after[k] != before[k]))):
            if names:
                shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
                parts.append(f"{split}: {len(names)} {what} ({shown})")
    return "; ".join(parts) or "the same files, other settings"


def default_cache_dir(root: str) -> str:
    """``<root>/.ffsd-cache`` when ``root`` is writable, else ``$XDG_CACHE_HOME/ffsd-tf`` (default
    ``~/.cache/ffsd-tf``); entries are named by the folder's path, so one cache dir serves many folders."""
    if os.access(root, os.W_OK | os.X_OK):
        return os.path.join(root, CACHE_DIRNAME)
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ffsd-tf")


def _prepare(entry: str, train: list, test: list, size: int, key: str, table: dict, workers: int) -> None:
    """Decodes every file once into a new cache, then puts it in place of ``entry`` (see ``cache.py``)."""
    import tensorflow as tf

    items = train + test
    tmp = f"{entry}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    writer = cache.Writer(tmp, {"train": len(train), "test": len(test)}, size)
    sums, squares, all_gray, done = np.zeros(3, np.int64), np.zeros(3, np.int64), True, 0
    progress = _Progress(len(items), f"folder: preparing {os.path.basename(entry)}")
    try:
        try:
            for batch, gray, s1, s2 in _decoded([p for p, _ in items], size, workers).as_numpy_iterator():
                n_train = max(0, min(len(batch), len(train) - done))
                if n_train:
                    writer.add("train", batch[:n_train])
                    sums += s1[:n_train].sum(axis=0)
                    squares += s2[:n_train].sum(axis=0)
                if n_train < len(batch):
                    writer.add("test", batch[n_train:])
                all_gray = all_gray and bool(gray.all())
                done += len(batch)
                progress.update(done)
        except tf.errors.OpError as e:
            for path, _ in items[done : done + DECODE_BATCH]:  # the first bad file, by the eager rules' own message
                _decode(path, size)
            raise DataError(f"cannot decode the images from {items[done][0]} on ({error_summary(e)[:120]})") from None
        writer.finish({"key": key, "image_size": size, "all_gray": all_gray, "sum": [int(v) for v in sums],
                       "sum_squares": [int(v) for v in squares]}, table)
        cache.install(tmp, entry)
    except OSError as e:
        raise DataError(f"cannot write the folder cache {entry} ({e.strerror or e}); free some space or pass "
                        "--cache_dir=<a writable folder>") from None
    finally:
        writer.abort()
        shutil.rmtree(tmp, ignore_errors=True)
    progress.done(entry)


def _cached(root: str, train: list, test: list, size: int, split_tag: str, cache_dir: str | None,
            rebuild: bool, workers: int | None) -> tuple[dict, str]:
    """(checked index, entry folder) of the folder's prepared cache, preparing it first when it is
    missing, stale (the file list, sizes or modification times changed) or ``rebuild``."""
    import hashlib

    import tensorflow as tf

    directory = os.path.abspath(os.path.expanduser(os.fspath(cache_dir))) if cache_dir else default_cache_dir(root)
    name = hashlib.sha256(os.path.realpath(root).encode()).hexdigest()[:10]
    entry = os.path.join(directory, f"{size}px-{split_tag}-{name}")
    table = {"train": _file_table(train, root), "test": _file_table(test, root)}
    key = hashlib.sha256(json.dumps([cache.FORMAT, tf.__version__, size, split_tag, table]).encode()).hexdigest()
    try:
        os.makedirs(directory, exist_ok=True)
        lock = open(f"{entry}.lock", "a")
    except OSError as e:
        raise DataError(f"cannot create the folder cache in {directory} ({e.strerror or e}); "
                        "pass --cache_dir=<a writable folder>") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one process prepares; the others then find it ready
        for stale in glob.glob(glob.escape(entry) + ".tmp-*"):  # left by a killed preparation (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        if os.path.isdir(entry) and not rebuild:
            index = cache.read_index(entry)
            if index["key"] == key:
                for split in cache.SPLITS:
                    if index["counts"][split] != len(table[split]) or index["image_size"] != size:
                        raise cache.damaged(entry, f"{cache.INDEX} does not match its key")
                return index, entry
            try:
                with open(os.path.join(entry, cache.FILES), encoding="utf-8") as f:
                    why = _changes(json.load(f), table)
            except (OSError, ValueError, TypeError, AttributeError, IndexError):
                why = "its file list is unreadable"
            print(f"folder: {root} changed since its cache was prepared ({why}); preparing it again",
                  file=sys.stderr)
        _prepare(entry, train, test, size, key, table, _workers(workers))
        return cache.read_index(entry), entry


def load_folder(
    data_dir: str | None = None, *, image_size: int | None = None, validation_split: float | None = None,
    cache_dir: str | None = None, rebuild_cache: bool = False, workers: int | None = None, **_
) -> Source:
    """``--dataset=folder --data_dir=DIR``: see the module docstring for the layouts and rules."""
    if not data_dir:
        raise DataError("--dataset=folder needs --data_dir=<a folder with one subfolder of images per class>")
    root = os.path.expanduser(os.fspath(data_dir))
    if not os.path.isdir(root):
        raise DataError(f"--data_dir={root} is not a folder; pass a folder with one subfolder of images per class")
    size = int(image_size or DEFAULT_IMAGE_SIZE)
    train_dir = os.path.join(root, "train")
    split_dir = next((os.path.join(root, d) for d in SPLIT_DIRS if os.path.isdir(os.path.join(root, d))), None)
    if os.path.isdir(train_dir) and split_dir is not None:
        if validation_split is not None:
            raise DataError(f"{root} already has train/ and {os.path.basename(split_dir)}/ folders; "
                            "drop --validation_split")
        train_files = _class_files(train_dir)
        classes = sorted(train_files)
        test_files = _class_files(split_dir, classes)
        train = [(p, classes.index(n)) for n in classes for p in train_files[n]]
        test = [(p, classes.index(n)) for n in sorted(test_files) for p in test_files[n]]
        origin = f"{train_dir} + {split_dir}"
        split_tag = os.path.basename(split_dir)
    else:
        base = train_dir if os.path.isdir(train_dir) else root
        if validation_split is None:
            raise DataError(
                f"{root} has no train/ + val/ (or test/) folders; pass --validation_split=0.2 to hold out "
                "a fraction of each class, or add a val/ folder"
            )
        files = _class_files(base)
        classes = sorted(files)
        train, test = _split(files, float(validation_split))
        if not test:
            raise DataError(
                f"--validation_split={validation_split} holds out no image of {base} ({len(train)} images); "
                "raise it or add images"
            )
        origin = f"{base}, validation_split={validation_split}"
        split_tag = f"split{float(validation_split):g}" + ("-train" if base == train_dir else "")
    if len(classes) < 2:
        raise DataError(f"{root} has only one class folder ({classes[0]}); a classifier needs at least 2")
    index, entry = _cached(root, train, test, size, split_tag, cache_dir, bool(rebuild_cache), workers)
    x_train, x_test = cache.open_split(entry, "train", index), cache.open_split(entry, "test", index)
    y_train = np.array([label for _, label in train], np.int32)
    y_test = np.array([label for _, label in test], np.int32)
    mean, std = cache.channel_moments(index)
    source = Source("folder", len(classes), x_train, y_train, x_test, y_test, mean, std, classes,
                    origin=f"{origin}, cache {entry}")
    return source.validated()
