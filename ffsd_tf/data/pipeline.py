"""The input pipeline: ``load_dataset`` and the ``DataBundle`` it returns.

What a bundle gives:

* ``train_stream(start_epoch)``: an infinite ``tf.data.Dataset`` of normalised, augmented
  ``(float32 [B, H, W, C], int32 [B])`` batches, epoch after epoch, starting at ``start_epoch``.
  Every epoch is a full shuffle of the training set cut into ``steps_per_epoch`` batches; what
  happens to a last, partial batch is the ``partial_batch`` policy (``PARTIAL_BATCH_POLICIES``):
  ``drop_small`` (default) drops it when it holds fewer than half a batch, ``keep`` always trains
  on it (the authors' loader, PyTorch's ``drop_last=False``), ``drop`` never does (``drop_last=
  True``). A dropped remainder is a different set of images each epoch (the order is reshuffled),
  so every image is still trained on; a tiny last batch, by contrast, is a full-learning-rate step
  on the BatchNorm statistics of a handful of images (8 of CIFAR-10 at 5,000 images and batch 128),
  which costs points and spreads seeds. The order and every augmentation draw are pure
  functions of ``(seed, epoch)``: the permutation is ``tf.random.experimental.index_shuffle``
  keyed by ``(seed, epoch)``, and the crop offsets and flips of the sample at position ``i`` of
  the epoch are element ``i`` of ``tf.random.stateless_uniform`` vectors keyed by the same pair.
  So a run resumed at epoch k sees exactly the batches that an uninterrupted run sees in epoch k,
  whatever happened before, and nothing depends on global RNG state.
* ``test_dataset()``: the test split in order, normalised, not augmented, batched.
* ``raw(split)``: unbatched uint8 images and int32 labels, for exporters and calibration data.
* ``normalize(images)``: ``(images / 255 - mean) / std`` per channel, as a TF op.

Augmentation follows the authors' CIFAR-100 code (SJLeo/FFSD ``data/cifar100.py``:
``Pad(4, padding_mode='reflect')``, ``RandomHorizontalFlip()``, ``RandomCrop(32)``, then
``Normalize(mean, std)``; test: ``Normalize`` only): reflect-pad by 4, a uniformly random crop back
to H x W (offsets 0..8 in each axis), a horizontal flip with probability 1/2. It is applied to every
dataset (the pad is clamped to H-1 for tiny images, as reflect padding needs). It runs on whole
uint8 batches (a gather per axis), which is much cheaper than per-image ops in ``tf.data``.

The decoded uint8 data lives in memory (NumPy arrays, converted once to tensors), so nothing is
decoded twice, except ``folder``'s, which stays in its prepared cache on disk (``CachedBundle``:
batches read their rows from it, with the same order and augmentation); ``image_size`` resizes both splits once, at load time (bilinear, rounded to uint8).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import tensorflow as tf

from ffsd_tf.data.base import (  # noqa: F401 (batches_per_epoch and the policies are public here too)
    DEFAULT_PARTIAL_BATCH,
    PARTIAL_BATCH_POLICIES,
    Source,
    batches_per_epoch,
)
from ffsd_tf.data.idx import DataError
from ffsd_tf.data.registry import DATASETS

AUTOTUNE = tf.data.AUTOTUNE
DEFAULT_PAD = 4
_RESIZE_CHUNK = 4096


@dataclasses.dataclass(eq=False)
class DataBundle:
    """A dataset in memory plus its deterministic input pipelines (see the module docstring)."""

    name: str
    num_classes: int
    image_shape: tuple  # (H, W, C)
    mean: tuple  # per channel, in [0, 1] pixel units
    std: tuple
    class_names: list
    batch_size: int
    eval_batch_size: int
    x_train: np.ndarray = dataclasses.field(repr=False)  # uint8 [N, H, W, C]
    y_train: np.ndarray = dataclasses.field(repr=False)  # int32 [N]
    x_test: np.ndarray = dataclasses.field(repr=False)
    y_test: np.ndarray = dataclasses.field(repr=False)
    seed: int = 0
    augment: bool = True
    pad: int = DEFAULT_PAD
    partial_batch: str = DEFAULT_PARTIAL_BATCH

    # Sizes -----------------------------------------------------------------------------------
    @property
    def train_size(self) -> int:
        return int(len(self.y_train))

    @property
    def test_size(self) -> int:
        return int(len(self.y_test))

    @property
    def steps_per_epoch(self) -> int:
        """Batches per training epoch under the ``partial_batch`` policy (``batches_per_epoch``)."""
        return batches_per_epoch(self.train_size, self.batch_size, self.partial_batch)

    @property
    def eval_steps(self) -> int:
        """Batches of ``test_dataset()``: ``ceil(test_size / eval_batch_size)``."""
        return math.ceil(self.test_size / self.eval_batch_size)

    # Tensors ---------------------------------------------------------------------------------
    @functools.cached_property
    def _tensors(self) -> dict:
        """The arrays as eager tensors, made once per bundle and shared by every dataset it builds."""
        with tf.init_scope(), tf.device("/CPU:0"):
            return {
                "train": (tf.constant(self.x_train), tf.constant(self.y_train, tf.int32)),
                "test": (tf.constant(self.x_test), tf.constant(self.y_test, tf.int32)),
            }

    def normalize(self, images: tf.Tensor) -> tf.Tensor:
        """``(images / 255 - mean) / std`` per channel; ``images`` are pixel values in [0, 255] (any dtype)."""
        images = tf.cast(images, tf.float32)
        mean = tf.constant(self.mean, tf.float32)
        std = tf.constant(self.std, tf.float32)
        return (images / 255.0 - mean) / std

    # Datasets --------------------------------------------------------------------------------
    def raw(self, split: str) -> tf.data.Dataset:
        """Unbatched, unshuffled ``(uint8 [H, W, C], int32 [])`` of ``split`` ("train" or "test")."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        return tf.data.Dataset.from_tensor_slices(self._tensors[split])

    def test_dataset(self) -> tf.data.Dataset:
        """The test split in order: normalised, not augmented, batches of ``eval_batch_size``."""
        ds = self.raw("test").batch(self.eval_batch_size)
        ds = ds.map(lambda x, y: (self.normalize(x), y), num_parallel_calls=AUTOTUNE, deterministic=True)
        return ds.prefetch(AUTOTUNE)

    def train_stream(self, start_epoch: int = 0) -> tf.data.Dataset:
        """Infinite batches of epochs ``start_epoch, start_epoch + 1, ...`` (``steps_per_epoch`` each).

        Feed it to ``model.fit(..., steps_per_epoch=bundle.steps_per_epoch, initial_epoch=start_epoch)``.
        """
        start_epoch = int(start_epoch)
        if start_epoch < 0:
            raise ValueError(f"start_epoch must be >= 0, got {start_epoch}")
        plans = tf.data.Dataset.counter(start=start_epoch, dtype=tf.int64).flat_map(self.epoch_plan)
        # The arrays enter as the input of a dataset op, not as a capture of a dataset function:
        # captured eager tensors are embedded in the function's graph as constants, which costs
        # seconds per 100 MB each time the pipeline is instantiated.
        data = tf.data.Dataset.from_tensors(self._tensors["train"]).repeat()
        ds = tf.data.Dataset.zip((plans, data))
        ds = ds.map(self._train_batch, num_parallel_calls=AUTOTUNE, deterministic=True)
        return ds.prefetch(AUTOTUNE)

    def epoch_plan(self, epoch) -> tf.data.Dataset:
        """What epoch ``epoch`` draws, as ``steps_per_epoch`` batches of per-sample parameters.

        Elements: ``(index,)`` without augmentation, else ``(index, dy, dx, flip)``, each [B]:
        the training samples in the epoch's order, their crop offsets in [0, 2 * pad] and
        their flip bits. A pure function of ``(seed, epoch)``; a dropped remainder is the tail of
        the epoch's order.
        """
        n = self.train_size
        key = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(epoch, tf.int64)])
        fold = tf.random.experimental.stateless_fold_in
        order = tf.random.experimental.index_shuffle(
            tf.range(n, dtype=tf.int64), seed=fold(key, 0), max_index=tf.constant(n - 1, tf.int64)
        )
        steps = self.steps_per_epoch
        if not self.augment:
            return tf.data.Dataset.from_tensor_slices((order,)).batch(self.batch_size).take(steps)
        span = 2 * self.pad + 1  # crop offsets 0 .. 2 * pad in the padded image
        uniform = functools.partial(tf.random.stateless_uniform, [n], dtype=tf.int32)
        dy = uniform(seed=fold(key, 1), minval=0, maxval=span)
        dx = uniform(seed=fold(key, 2), minval=0, maxval=span)
        flip = uniform(seed=fold(key, 3), minval=0, maxval=2)
        return tf.data.Dataset.from_tensor_slices((order, dy, dx, flip)).batch(self.batch_size).take(steps)

    def _train_batch(self, plan, data):
        images, labels = data
        x = tf.gather(images, plan[0])
        if self.augment:
            x = self.augment_batch(x, *plan[1:])
        return self.normalize(x), tf.gather(labels, plan[0])

    def augment_batch(self, images: tf.Tensor, dy: tf.Tensor, dx: tf.Tensor, flip: tf.Tensor) -> tf.Tensor:
        """Reflect-pad by ``pad``, crop H x W at per-image offsets ``(dy, dx)``, mirror where ``flip`` == 1.

        ``images``: [B, H, W, C] (any dtype); ``dy``, ``dx`` in [0, 2 * pad]; ``flip`` in {0, 1}; all [B].
        """
        height, width = self.image_shape[0], self.image_shape[1]
        p = self.pad
        padded = tf.pad(images, [[0, 0], [p, p], [p, p], [0, 0]], mode="REFLECT")
        rows = dy[:, None] + tf.range(height, dtype=dy.dtype)  # [B, H]
        cols = dx[:, None] + tf.range(width, dtype=dx.dtype)  # [B, W]
        out = tf.gather(padded, rows, axis=1, batch_dims=1)  # [B, H, W + 2p, C]
        out = tf.gather(out, cols, axis=2, batch_dims=1)  # [B, H, W, C]
        return tf.where(tf.equal(flip, 1)[:, None, None, None], tf.reverse(out, axis=[2]), out)


class CachedBundle(DataBundle):
    """A DataBundle whose images stay on disk (``--dataset=folder``'s prepared cache,
    ``cache.CachedImages``): every batch reads its rows from the cache, so memory does not grow with
    the number of images. The order, the augmentation draws (``epoch_plan``), ``augment_batch`` and
    ``normalize`` are DataBundle's, so the batches are exactly those of the same images in memory
    (tested batch for batch, resume included). Only the labels are in memory (4 bytes an image).
    """

    @functools.cached_property
    def _tensors(self) -> dict:
        with tf.init_scope(), tf.device("/CPU:0"):
            return {"train": (None, tf.constant(self.y_train, tf.int32)),
                    "test": (None, tf.constant(self.y_test, tf.int32))}

    def _read(self, split: str, indices: tf.Tensor) -> tf.Tensor:
        store = self.x_train if split == "train" else self.x_test
        images = tf.numpy_function(store.read, [indices], tf.uint8, stateful=False)
        return tf.ensure_shape(images, [None, *self.image_shape])

    def _rows(self, split: str, indices: tf.Tensor):
        return self._read(split, indices), tf.gather(self._tensors[split][1], indices)

    def raw(self, split: str) -> tf.data.Dataset:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        n = self.train_size if split == "train" else self.test_size
        ds = tf.data.Dataset.range(n).batch(256)
        return ds.map(lambda i: self._rows(split, i)).unbatch()

    def test_dataset(self) -> tf.data.Dataset:
        ds = tf.data.Dataset.range(self.test_size).batch(self.eval_batch_size)
        ds = ds.map(lambda i: self._rows("test", i), num_parallel_calls=AUTOTUNE, deterministic=True)
        ds = ds.map(lambda x, y: (self.normalize(x), y), num_parallel_calls=AUTOTUNE, deterministic=True)
        return ds.prefetch(AUTOTUNE)

    def train_stream(self, start_epoch: int = 0) -> tf.data.Dataset:
        start_epoch = int(start_epoch)
        if start_epoch < 0:
            raise ValueError(f"start_epoch must be >= 0, got {start_epoch}")
        plans = tf.data.Dataset.counter(start=start_epoch, dtype=tf.int64).flat_map(self.epoch_plan)
        ds = plans.map(self._cached_batch, num_parallel_calls=AUTOTUNE, deterministic=True)
        return ds.prefetch(AUTOTUNE)

    def _cached_batch(self, *plan):
        x, labels = self._rows("train", plan[0])
        if self.augment:
            x = self.augment_batch(x, *plan[1:])
        return self.normalize(x), labels


# ---------------------------------------------------------------------------------------------


def balanced_subset(labels: np.ndarray, size: int, seed: int, salt: int) -> np.ndarray:
    """Sorted indices of ``size`` samples, as class-balanced as the data allows, fixed by ``(seed, salt)``.

    A seeded permutation, then round-robin over classes: every class gives its first sample (in
    permuted order), then its second, and so on, until ``size`` are taken.
    """
    rng = np.random.default_rng([seed, salt])
    perm = rng.permutation(len(labels))
    permuted = labels[perm]
    by_class = np.argsort(permuted, kind="stable")
    sorted_labels = permuted[by_class]
    first = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank = np.empty(len(labels), np.int64)
    rank[by_class] = np.arange(len(labels)) - first  # position of each permuted sample within its class
    take = np.lexsort((np.arange(len(labels)), rank))[:size]
    return np.sort(perm[take])


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of uint8 NHWC images to ``size`` x ``size``, rounded back to uint8."""
    if images.shape[1:3] == (size, size):
        return images
    out = np.empty((len(images), size, size, images.shape[3]), np.uint8)
    for start in range(0, len(images), _RESIZE_CHUNK):
        chunk = tf.image.resize(images[start : start + _RESIZE_CHUNK], [size, size], method="bilinear")
        out[start : start + _RESIZE_CHUNK] = np.clip(np.rint(chunk.numpy()), 0, 255).astype(np.uint8)
    return out


def _positive_int(value, what: str, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise DataError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def load_dataset(
    name: str,
    *,
    data_dir: str | None = None,
    batch_size: int = 128,
    eval_batch_size: int | None = None,
    seed: int = 0,
    augment: bool = True,
    train_subset: int | None = None,
    test_subset: int | None = None,
    image_size: int | None = None,
    synthetic_classes: int = 10,
    synthetic_train: int = 512,
    synthetic_test: int = 256,
    pad: int = DEFAULT_PAD,
    partial_batch: str = DEFAULT_PARTIAL_BATCH,
    validation_split: float | None = None,
    cache_dir: str | None = None,
    rebuild_cache: bool = False,
) -> DataBundle:
    """Loads dataset ``name`` (a key of ``DATASETS``) into memory, validated, and wraps it in a DataBundle.

    Args:
      data_dir: where the data lives; its meaning depends on the dataset (tfds data_dir, an .npz
        file or a folder holding one, a folder of IDX files); None = the dataset's default.
      batch_size / eval_batch_size: training / test batch sizes (eval default: batch_size).
      seed: fixes the epoch orders, the augmentation, the subsets and the synthetic data.
      augment: reflect-pad + random crop + horizontal flip on the train stream.
      train_subset / test_subset: keep only this many samples (seeded, class-balanced).
      image_size: resize both splits (bilinear) to image_size x image_size.
      synthetic_*: the ``synthetic`` dataset's number of classes and of train / test images.
      pad: reflect padding before the random crop (the paper's 4).
      partial_batch: what to do with a last, partial training batch: ``drop_small`` (drop it if
        it is under half a batch; the default), ``keep`` (the authors' loader) or ``drop``.
      validation_split: ``folder`` only, for a folder without ``val/``/``test/``: the fraction
        of each class held out as the test split (fixed, stratified; see ``folder.py``).
      cache_dir / rebuild_cache: ``folder`` only: where its prepared cache lives (default
        ``<data_dir>/.ffsd-cache``, see ``folder.py``) and whether to prepare it again now.

    Streaming datasets (``imagenet2012``) return their own bundle with the same interface (see
    ``imagenet.py``); ``image_size`` then sets the crop size, ``pad`` and ``synthetic_*`` do not apply.

    Raises:
      DataError: unknown name, bad argument, missing or corrupt data, labels out of range,
        inconsistent shapes: one actionable line.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}")
    batch_size = _positive_int(batch_size, "batch_size")
    eval_batch_size = _positive_int(eval_batch_size, "eval_batch_size", allow_none=True) or batch_size
    train_subset = _positive_int(train_subset, "train_subset", allow_none=True)
    test_subset = _positive_int(test_subset, "test_subset", allow_none=True)
    image_size = _positive_int(image_size, "image_size", allow_none=True)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(pad, bool) or not isinstance(pad, (int, np.integer)) or pad < 0:
        raise DataError(f"pad must be a non-negative integer, got {pad!r}")
    seed = int(seed)
    batches_per_epoch(1, 1, partial_batch)  # validates the policy name
    if validation_split is not None:
        if name != "folder":
            raise DataError(f"validation_split applies to the folder dataset only, not {name}; drop it")
        if isinstance(validation_split, bool) or not 0 < float(validation_split) < 1:
            raise DataError(f"validation_split must be a fraction in (0, 1), e.g. 0.2, got {validation_split!r}")

    if name != "folder" and (cache_dir is not None or rebuild_cache):
        raise DataError(f"cache_dir and rebuild_cache apply to the folder dataset only, not {name}; drop them")

    if getattr(DATASETS[name], "streams", False):  # imagenet2012: streamed from disk, its own bundle
        return DATASETS[name](
            data_dir,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            seed=seed,
            augment=bool(augment),
            train_subset=train_subset,
            test_subset=test_subset,
            image_size=image_size,
            partial_batch=partial_batch,
        )

    source: Source = DATASETS[name](
        data_dir,
        seed=seed,
        synthetic_classes=synthetic_classes,
        synthetic_train=synthetic_train,
        synthetic_test=synthetic_test,
        image_size=image_size,
        validation_split=validation_split,
        cache_dir=cache_dir,
        rebuild_cache=bool(rebuild_cache),
    )
    source = source.validated()  # loaders validate too; this guards loaders added later

    x_train, y_train, x_test, y_test = source.x_train, source.y_train, source.x_test, source.y_test
    for split, subset, x, salt in (("train", train_subset, x_train, 1), ("test", test_subset, x_test, 2)):
        if subset is None:
            continue
        if subset > len(x):
            raise DataError(f"{split}_subset={subset} exceeds the {len(x)} {split} images of {name}")
        labels = y_train if split == "train" else y_test
        keep = balanced_subset(labels, subset, seed, salt)
        take = (lambda x: x[keep]) if isinstance(x, np.ndarray) else (lambda x: x.subset(keep))  # cache: a view
        if split == "train":
            x_train, y_train = take(x_train), y_train[keep]
        else:
            x_test, y_test = take(x_test), y_test[keep]
    if image_size is not None:
        x_train, x_test = resize_images(x_train, image_size), resize_images(x_test, image_size)

    height, width, channels = x_train.shape[1:]
    bundle_class = DataBundle if isinstance(x_train, np.ndarray) else CachedBundle  # folder: from its cache
    return bundle_class(
        name=name,
        num_classes=source.num_classes,
        image_shape=(int(height), int(width), int(channels)),
        mean=source.mean,
        std=source.std,
        class_names=list(source.class_names),
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        seed=seed,
        augment=bool(augment),
        pad=int(min(pad, height - 1, width - 1)),  # reflect padding needs pad < size
        partial_batch=partial_batch,
    )
