"""ImageNet-1k (ILSVRC 2012), streamed from TensorFlow Datasets (``imagenet2012``).

ImageNet does not fit in memory, so unlike the other datasets (``sources.py`` + ``DataBundle``)
it is read from tfds' TFRecord shards on every epoch, JPEG bytes first, and decoded on the fly.
:func:`load_imagenet2012` returns an :class:`ImageNetBundle`, which has ``DataBundle``'s interface
(``train_stream``, ``test_dataset``, ``raw``, ``normalize``, the sizes and the metadata), so
``ffsd_tf/run.py`` and the exporter use it unchanged.

Data: the tfds data_dir (``--data_dir``, else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``)
holds a prepared ``imagenet2012``, or its manual directory ``<data_dir>/downloads/manual/`` holds
``ILSVRC2012_img_train.tar`` and ``ILSVRC2012_img_val.tar`` (from https://image-net.org, after
registering); then the dataset is prepared from them first (hours, ~150 GB). With neither, a
one-line :class:`DataError` at once; the network is never used. The evaluation split is tfds'
``validation`` (the 50,000 ILSVRC 2012 validation images), as in the paper.

Transforms, as the paper's (and torchvision's) ImageNet recipe (S = ``image_size``, default 224):

* train: ``RandomResizedCrop(S, scale=(0.08, 1), ratio=(3/4, 4/3))`` with torchvision's sampling
  rule (10 tries of a uniform area fraction and a log-uniform aspect ratio, first fitting one
  wins, else a center crop of the whole image clamped to the ratio range), decoded with
  ``decode_and_crop_jpeg`` (only the crop is decoded), bilinear resize with antialiasing (PIL's
  behaviour when downscaling), ``RandomHorizontalFlip``;
* evaluation (and ``raw``): resize the shorter side to ``round(S * 256 / 224)`` (256 for 224),
  the longer in proportion (truncated, like torchvision), then center crop S x S;
* both: ``Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))`` on [0, 1] pixels. Unlike
  torchvision on PIL images, the resized pixels are not rounded to uint8 before normalising.

Determinism of ``train_stream`` (epoch ``e``, seed ``s``):

* exact: the crop and flip of the example at position ``i`` of epoch ``e`` are stateless draws
  keyed by ``(s, e, i)``; the file order and the example shuffle of epoch ``e`` use seeds derived
  from ``(s, e)`` only, so a run resumed at epoch ``e`` reads exactly the batches an uninterrupted
  run reads in epoch ``e`` (tested). The interleave of files is deterministic (tfds turns
  determinism on when a shuffle seed is given).
* the order is a *file-level* shuffle (tfds' 1024 train shards) + a ``SHUFFLE_BUFFER``-example
  shuffle buffer, not a full permutation of the 1.28 M examples: close to, but not, uniform.
* reproducible for the same prepared files (the same tfds version and shard layout); TF's global
  seed plays no part (it is kept out of the shuffles' seeds). JPEG decoding and resizing are
  deterministic on one machine; another libjpeg build could differ in the last bit.
* ``train_subset=N`` keeps the first N examples in tfds' stored order (tfds shuffles examples by
  key when it prepares the dataset), not a class-balanced subset; ``test_subset`` likewise.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys

import tensorflow as tf

from ffsd_tf.data.base import batches_per_epoch, error_summary
from ffsd_tf.data.idx import DataError
from ffsd_tf.data.sources import prepare_offline, tfds_data_dir

NAME = "imagenet2012"
NUM_CLASSES = 1000
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
ARCHIVES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
TRAIN_SPLIT, TEST_SPLIT = "train", "validation"
DEFAULT_IMAGE_SIZE = 224
RESIZE_RATIO = 256 / 224  # evaluation: shorter side 256, then a 224 center crop
SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
CROP_TRIES = 10
SHUFFLE_BUFFER = 10_000  # encoded JPEGs (~110 kB each): about 1 GB of host memory
AUTOTUNE = tf.data.AUTOTUNE


def open_builder(data_dir: str | None):
    """The prepared tfds ``imagenet2012`` builder in ``data_dir``, preparing it from the manual archives if needed.

    Raises DataError (one line, within seconds, never touching the network) when it is neither
    prepared nor preparable.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataError(
            f"{NAME}: tensorflow-datasets is not importable ({error_summary(e)}); pip install -r requirements.txt"
        ) from None
    root = tfds_data_dir(data_dir)
    try:
        builder = tfds.builder(NAME, data_dir=root)
    except Exception as e:
        raise DataError(f"{NAME}: tensorflow-datasets cannot open its builder in {root} ({error_summary(e)})") from None
    if not builder.is_prepared():
        manual_dir = os.path.join(root, "downloads", "manual")
        missing = [a for a in ARCHIVES if not os.path.isfile(os.path.join(manual_dir, a))]
        if missing:
            raise DataError(
                f"{NAME} is not prepared in the tfds data_dir {root} and its archives are missing "
                f"({', '.join(missing)}; no download here): put {ARCHIVES[0]} and {ARCHIVES[1]} "
                f"(from https://image-net.org/download-images, registration required) in {manual_dir}"
            )
        print(f"{NAME}: preparing the tfds dataset in {root} from {manual_dir} (hours, ~150 GB) ...", file=sys.stderr)
        prepare_offline(builder, manual_dir, f"{NAME}: preparing the tfds dataset from {manual_dir}",
                        f"check {ARCHIVES[0]} and {ARCHIVES[1]} there")
    known = set(builder.info.splits.keys()) if builder.info.splits else set()
    absent = [s for s in (TRAIN_SPLIT, TEST_SPLIT) if known and s not in known]
    if absent:
        archives = " or ".join(ARCHIVES[(TRAIN_SPLIT, TEST_SPLIT).index(s)] for s in absent)
        raise DataError(
            f"{NAME} in {builder.data_dir} has no {' or '.join(absent)} split (prepared without {archives}?); "
            "prepare it again with both archives"
        )
    return builder


# ---------------------------------------------------------------------------------------------
# Transforms (pure TF, one image at a time)


def random_resized_crop_window(shape, seed, scale=SCALE, ratio=RATIO, tries: int = CROP_TRIES):
    """torchvision ``RandomResizedCrop.get_params`` as stateless TF ops: ``[top, left, height, width]`` int32.

    ``shape``: the image's [H, W, ...]; ``seed``: a [2] stateless seed.
    """
    height = tf.cast(shape[0], tf.float32)
    width = tf.cast(shape[1], tf.float32)
    seeds = tf.random.experimental.stateless_split(seed, 4)
    area = height * width * tf.random.stateless_uniform([tries], seeds[0], scale[0], scale[1])
    log_ratio = tf.random.stateless_uniform([tries], seeds[1], math.log(ratio[0]), math.log(ratio[1]))
    aspect = tf.exp(log_ratio)
    w = tf.round(tf.sqrt(area * aspect))  # round half to even, like Python's round()
    h = tf.round(tf.sqrt(area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    h_try, w_try = h[first], w[first]
    # torch.randint(0, H - h + 1): uniform integers in [0, H - h].
    top_try = tf.floor(tf.random.stateless_uniform([], seeds[2]) * (height - h_try + 1))
    left_try = tf.floor(tf.random.stateless_uniform([], seeds[3]) * (width - w_try + 1))
    # Fallback: the whole image, clamped to the ratio range, centered.
    in_ratio = width / height
    h_fb = tf.where(in_ratio < ratio[0], tf.round(width / ratio[0]), height)
    w_fb = tf.where(in_ratio > ratio[1], tf.round(height * ratio[1]), width)
    h_fb = tf.minimum(h_fb, height)
    w_fb = tf.minimum(w_fb, width)
    top_fb = tf.floor((height - h_fb) / 2)
    left_fb = tf.floor((width - w_fb) / 2)
    ok = tf.reduce_any(fits)
    window = tf.where(ok, tf.stack([top_try, left_try, h_try, w_try]), tf.stack([top_fb, left_fb, h_fb, w_fb]))
    return tf.cast(window, tf.int32)


def resize_shorter_center_crop(image, size: int, resize_to: int):
    """torchvision ``Resize(resize_to)`` (shorter side; the longer truncated) + ``CenterCrop(size)``; float32 out."""
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    short = tf.minimum(h, w)
    new_h = tf.where(h <= w, float(resize_to), tf.floor(resize_to * h / short))
    new_w = tf.where(h <= w, tf.floor(resize_to * w / short), float(resize_to))
    resized = tf.image.resize(image, tf.cast(tf.stack([new_h, new_w]), tf.int32), method="bilinear", antialias=True)
    top = tf.cast(tf.round((new_h - size) / 2), tf.int32)  # int(round((H - S) / 2)), torchvision's offsets
    left = tf.cast(tf.round((new_w - size) / 2), tf.int32)
    return tf.image.crop_to_bounding_box(resized, top, left, size, size)


@dataclasses.dataclass(eq=False)
class ImageNetBundle:
    """ImageNet streamed from a prepared tfds ``imagenet2012`` (see the module docstring).

    Same interface as :class:`ffsd_tf.data.pipeline.DataBundle`.
    """

    builder: object = dataclasses.field(repr=False)
    batch_size: int
    eval_batch_size: int
    train_size: int
    test_size: int
    image_size: int = DEFAULT_IMAGE_SIZE
    seed: int = 0
    augment: bool = True
    train_split: str = TRAIN_SPLIT
    test_split: str = TEST_SPLIT
    shuffle_buffer: int = SHUFFLE_BUFFER
    name: str = NAME
    num_classes: int = NUM_CLASSES
    mean: tuple = MEAN
    std: tuple = STD
    class_names: list = dataclasses.field(default_factory=list, repr=False)
    partial_batch: str = "drop_small"

    # Sizes -----------------------------------------------------------------------------------
    @property
    def image_shape(self) -> tuple:
        return (self.image_size, self.image_size, 3)

    @property
    def steps_per_epoch(self) -> int:
        """Batches per training epoch under the ``partial_batch`` policy (see ``base.batches_per_epoch``)."""
        return batches_per_epoch(self.train_size, self.batch_size, self.partial_batch)

    @property
    def eval_steps(self) -> int:
        return math.ceil(self.test_size / self.eval_batch_size)

    @property
    def resize_to(self) -> int:
        """Shorter side before the evaluation center crop: 256 for 224."""
        return int(round(self.image_size * RESIZE_RATIO))

    def normalize(self, images: tf.Tensor) -> tf.Tensor:
        """``(images / 255 - mean) / std`` per channel; ``images`` are pixel values in [0, 255] (any dtype)."""
        images = tf.cast(images, tf.float32)
        return (images / 255.0 - tf.constant(self.mean, tf.float32)) / tf.constant(self.std, tf.float32)

    # Reading ---------------------------------------------------------------------------------
    def _read(self, split: str, shuffle_seed=None) -> tf.data.Dataset:
        """``(jpeg bytes, int32 label)`` of ``split``, exactly its size; files shuffled by ``shuffle_seed`` if given."""
        import tensorflow_datasets as tfds

        size = self.train_size if split == self.train_split else self.test_size
        read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False)
        ds = self.builder.as_dataset(
            split=split,
            shuffle_files=shuffle_seed is not None,
            read_config=read_config,
            decoders={"image": tfds.decode.SkipDecoding()},
        )
        ds = ds.map(lambda ex: (ex["image"], tf.cast(ex["label"], tf.int32)), num_parallel_calls=AUTOTUNE)
        return ds.take(size)  # a no-op on real data; trims tfds' mock, which ignores split slicing

    def _eval_image(self, jpeg):
        image = tf.io.decode_jpeg(jpeg, channels=3)
        return resize_shorter_center_crop(image, self.image_size, self.resize_to)

    def _train_image(self, jpeg, seed):
        if not self.augment:
            return self._eval_image(jpeg)
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        window = random_resized_crop_window(tf.io.extract_jpeg_shape(jpeg), crop_seed)
        image = tf.io.decode_and_crop_jpeg(jpeg, window, channels=3)
        image = tf.image.resize(image, [self.image_size, self.image_size], method="bilinear", antialias=True)
        flip = tf.random.stateless_uniform([], flip_seed, 0, 2, dtype=tf.int32)
        return tf.cond(tf.equal(flip, 1), lambda: tf.reverse(image, axis=[1]), lambda: image)

    # Datasets --------------------------------------------------------------------------------
    def raw(self, split: str) -> tf.data.Dataset:
        """Unbatched, unshuffled ``(uint8 [S, S, 3], int32 [])`` of ``split`` ("train" or "test").

        The evaluation transform (resize + center crop), rounded to uint8, for both splits.
        """
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        source = self.train_split if split == "train" else self.test_split

        def to_uint8(jpeg, label):
            image = tf.clip_by_value(tf.round(self._eval_image(jpeg)), 0, 255)
            return tf.cast(image, tf.uint8), label

        return self._read(source).map(to_uint8, num_parallel_calls=AUTOTUNE, deterministic=True)

    def test_dataset(self) -> tf.data.Dataset:
        """The validation split in tfds' stored order: resized, center-cropped, normalised, batched."""
        ds = self._read(self.test_split).map(
            lambda jpeg, label: (self.normalize(self._eval_image(jpeg)), label),
            num_parallel_calls=AUTOTUNE,
            deterministic=True,
        )
        return ds.batch(self.eval_batch_size).prefetch(AUTOTUNE)

    def train_stream(self, start_epoch: int = 0) -> tf.data.Dataset:
        """Infinite batches of epochs ``start_epoch, start_epoch + 1, ...``; ``steps_per_epoch`` per epoch."""
        start_epoch = int(start_epoch)
        if start_epoch < 0:
            raise ValueError(f"start_epoch must be >= 0, got {start_epoch}")
        epochs = tf.data.Dataset.counter(start=start_epoch, dtype=tf.int64)
        return epochs.flat_map(self._epoch_fn).prefetch(AUTOTUNE)

    def epoch_dataset(self, epoch: int) -> tf.data.Dataset:
        """The ``steps_per_epoch`` normalised, augmented batches of ``epoch``: a pure function of ``(seed, epoch)``."""
        return tf.data.Dataset.from_tensors(tf.constant(int(epoch), tf.int64)).flat_map(self._epoch_fn)

    def epoch_seeds(self, epoch):
        """``(key, file_seed, shuffle_seed)`` of ``epoch``: a [2] stateless key and two int64 op seeds."""
        key = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(epoch, tf.int64)])
        draws = tf.random.stateless_uniform([2], seed=key, minval=1, maxval=2**31 - 1, dtype=tf.int64)
        return key, draws[0], draws[1]

    @tf.autograph.experimental.do_not_convert  # no tensor-dependent Python control flow; spares converting tfds
    def _epoch_fn(self, epoch):
        """Traced by ``flat_map``: builds epoch ``epoch``'s pipeline in the function's graph.

        Its op seeds are complete functions of ``(seed, epoch)``. The function graph inherits TF's
        global seed, which ``tf.data``'s shuffles would otherwise mix in (and, for a global seed of
        0, fail on with tensor op seeds); it is cleared while this graph is built.
        """
        graph = tf.compat.v1.get_default_graph()
        saved, graph.seed = graph.seed, None
        try:
            key, file_seed, shuffle_seed = self.epoch_seeds(epoch)
            ds = self._read(self.train_split, shuffle_seed=file_seed)
            ds = ds.shuffle(self.shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
        finally:
            graph.seed = saved
        fold = tf.random.experimental.stateless_fold_in

        def example(index, item):
            jpeg, label = item
            sample_key = fold(fold(key, 0), index)  # (seed, epoch, position in the epoch)
            return self.normalize(self._train_image(jpeg, sample_key)), label

        ds = ds.enumerate().map(example, num_parallel_calls=AUTOTUNE, deterministic=True)
        return ds.batch(self.batch_size).take(self.steps_per_epoch)


def _split_size(builder, split: str, subset: int | None) -> int:
    splits = builder.info.splits
    if splits and split in splits:
        size = int(splits[split].num_examples)
    else:  # tfds' mock: no split metadata; the dataset knows its cardinality
        size = int(builder.as_dataset(split=split).cardinality().numpy())
    if size <= 0:
        raise DataError(f"{NAME}: the {split} split in {builder.data_dir} is empty; prepare it again")
    if subset is not None:
        if subset > size:
            raise DataError(f"the subset of {subset} exceeds the {size} {split} images of {NAME}")
        size = subset
    return size


def load_imagenet2012(
    data_dir: str | None = None,
    *,
    batch_size: int = 256,
    eval_batch_size: int | None = None,
    seed: int = 0,
    augment: bool = True,
    train_subset: int | None = None,
    test_subset: int | None = None,
    image_size: int | None = None,
    shuffle_buffer: int = SHUFFLE_BUFFER,
    partial_batch: str = "drop_small",
    **_,
) -> ImageNetBundle:
    """Opens (or prepares) tfds ``imagenet2012`` in ``data_dir`` and returns its streaming bundle.

    ``image_size`` replaces 224 (the evaluation resize scales with it: 256/224 of it).
    Raises DataError when the data is missing, unprepared without its archives, or incomplete.
    """
    builder = open_builder(data_dir)
    train_size = _split_size(builder, TRAIN_SPLIT, train_subset)
    test_size = _split_size(builder, TEST_SPLIT, test_subset)
    names = list(builder.info.features["label"].names)
    if len(names) != NUM_CLASSES:
        raise DataError(f"{NAME} in {builder.data_dir} has {len(names)} classes, not {NUM_CLASSES}")
    return ImageNetBundle(
        builder=builder,
        batch_size=int(batch_size),
        eval_batch_size=int(eval_batch_size or batch_size),
        train_size=train_size,
        test_size=test_size,
        image_size=int(image_size or DEFAULT_IMAGE_SIZE),
        seed=int(seed),
        augment=bool(augment),
        train_split=TRAIN_SPLIT if train_subset is None else f"{TRAIN_SPLIT}[:{train_size}]",
        test_split=TEST_SPLIT if test_subset is None else f"{TEST_SPLIT}[:{test_size}]",
        shuffle_buffer=int(shuffle_buffer),
        class_names=names,
        partial_batch=partial_batch,
    )


load_imagenet2012.streams = True  # load_dataset hands it the pipeline arguments and returns its bundle
