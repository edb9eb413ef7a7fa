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
``images.MAX_IMAGE_PIXELS`` pixels is refused by its own error before it is decoded. The dataset
becomes the same in-memory uint8 :class:`~ffsd_tf.data.sources.Source` as every other one and gets the project's deterministic,
resumable augmentation. Channels come from the data: 1 when every image (of both
splits) is grayscale, else 3 (grayscale images are then repeated to RGB; an alpha channel is
dropped). Mean/std: per channel over the training images (``channel_stats``, in chunks).

A file that cannot be read or decoded (corrupt, truncated, not an image) stops the load with one
DataError naming the file; it is never skipped silently. Remove or fix it and run again.
"""

from __future__ import annotations

import os

import numpy as np

from ffsd_tf.data import images
from ffsd_tf.data.idx import DataError
from ffsd_tf.data.sources import Source, error_summary, channel_stats

IMAGE_EXTENSIONS = images.IMAGE_EXTENSIONS
SPLIT_DIRS = ("val", "test")  # the evaluation folder next to train/, first found
DEFAULT_IMAGE_SIZE = 32  # the CIFAR networks' input size
SPLIT_SEED = 20240917  # fixed: the held-out images do not depend on --seed


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


def _load_split(items: list, size: int) -> tuple[list, np.ndarray]:
    """Decodes the files on a few threads (TensorFlow's kernels release the GIL), in order: the first
    bad file in sorted order is the one reported."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
    try:
        images = list(pool.map(lambda item: _decode(item[0], size), items))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # a bad file: the files not started yet are dropped
    return images, np.array([label for _, label in items], np.int32)


def _stack(images: list, channels: int) -> np.ndarray:
    out = np.empty((len(images), images[0].shape[0], images[0].shape[1], channels), np.uint8)
    for i, image in enumerate(images):
        out[i] = image if image.shape[-1] == channels else np.repeat(image, channels, axis=-1)
    return out


def load_folder(
    data_dir: str | None = None, *, image_size: int | None = None, validation_split: float | None = None, **_
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
    if len(classes) < 2:
        raise DataError(f"{root} has only one class folder ({classes[0]}); a classifier needs at least 2")
    train_images, y_train = _load_split(train, size)
    test_images, y_test = _load_split(test, size)
    channels = 3 if any(im.shape[-1] == 3 for im in train_images + test_images) else 1
    x_train, x_test = _stack(train_images, channels), _stack(test_images, channels)
    del train_images, test_images
    mean, std = channel_stats(x_train)
    source = Source("folder", len(classes), x_train, y_train, x_test, y_test, mean, std, classes, origin=origin)
    return source.validated()
