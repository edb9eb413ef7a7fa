"""Where the images come from: one loader per in-memory dataset (the ``DATASETS`` registry that
names them, with ``folder`` and ``imagenet2012``, is ``registry.py``).

Every loader here returns a :class:`Source`: the raw uint8 NHWC images and int labels of both splits,
in memory, plus the dataset's normalisation statistics and class names. Augmentation,
normalisation, subsets, resizing and the per-epoch deterministic train stream are shared and live
in ``pipeline.py``. A loader that cannot find or read its data raises :class:`DataError` at once,
with one line saying what is missing, where it looked and how to fix it; it never touches the
network.

Loaders:

* ``cifar100`` / ``cifar10``: a local ``.npz`` (``x_train, y_train, x_test, y_test``) when
  ``data_dir`` is one, or a folder holding exactly one (it must hold 32x32x3 images, labels in
  the dataset's range and, if it has a ``class_names`` array, the dataset's names: anything else is
  a DataError pointing at ``npz``, never a silent relabel); otherwise TensorFlow Datasets in
  ``data_dir`` (default ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``). When the tfds dataset is
  not prepared yet it is prepared offline from the official *binary* archive placed at
  ``<data_dir>/downloads/manual/cifar-{10,100}-binary.tar.gz`` (tfds' manual directory; it looks
  the file up by the name registered in its checksum list, ``url_checksums/cifar*.txt``) and only
  then; without the archive the loader fails within a second instead of letting tfds retry the
  download for minutes. Normalisation: the authors' CIFAR-100 values, the canonical CIFAR-10 ones.
* ``fashion_mnist``: the four IDX files (raw or ``.gz``) in ``data_dir``, default
  ``/usr/share/datasets/fashion-mnist`` (Debian/Ubuntu package ``dataset-fashion-mnist``); 28x28
  images and labels 0..9, else DataError.
* ``npz``: any ``.npz`` with ``x_train, y_train, x_test, y_test`` and optionally ``class_names``
  (your own data): the metadata come from the data (see :func:`load_generic_npz`).
* ``folder``: a folder of images, one subfolder per class, streamed from a prepared cache (see
  ``folder.py``).
* ``synthetic``: a seeded, learnable toy task for smoke runs, tests and benchmarks (see
  :func:`load_synthetic`).
* ``imagenet2012``: the exception: it streams from tfds instead of loading into memory, so its
  loader (marked ``streams = True``) returns the whole bundle; see ``imagenet.py``.

:class:`Source`, ``channel_stats`` and ``error_summary`` live in ``base.py`` (imported here as before).
"""

from __future__ import annotations

import os

import numpy as np

from ffsd_tf.data.base import Source, channel_stats, error_summary  # noqa: F401 (re-exported)
from ffsd_tf.data.idx import DataError, read_idx

TFDS_DEFAULT_DATA_DIR = "~/tensorflow_datasets"
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100_CLASSES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
    "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
    "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
    "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm"
).split()
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
assert len(CIFAR100_CLASSES) == 100


# ---------------------------------------------------------------------------------------------
# .npz files


def find_npz(data_dir: str | None) -> str | None:
    """``data_dir`` itself if it is an ``.npz`` file, the one ``.npz`` in it if it is a folder, else None.

    Raises DataError for a missing ``.npz`` path or a folder holding several ``.npz`` files.
    """
    if not data_dir:
        return None
    path = os.path.expanduser(os.fspath(data_dir))
    if path.endswith(".npz"):
        if not os.path.isfile(path):
            raise DataError(f"--data_dir {path} does not exist; pass an existing .npz file or a folder holding one")
        return path
    if os.path.isdir(path):
        found = sorted(f for f in os.listdir(path) if f.endswith(".npz") and os.path.isfile(os.path.join(path, f)))
        if len(found) > 1:
            raise DataError(f"{path} holds several .npz files ({', '.join(found)}); pass --data_dir=<the .npz file>")
        if found:
            return os.path.join(path, found[0])
    return None


def read_npz(path: str, name: str) -> tuple[dict, list | None]:
    """The four arrays of an ``.npz`` (grayscale NHW made NHW1) and its ``class_names`` (or None)."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise DataError(f"cannot read {path} ({e.strerror or e}); pass a readable .npz file") from None
    if magic not in (b"PK\x03\x04", b"PK\x05\x06"):  # np.load would try (and refuse) a pickle
        raise DataError(f"{path} is not an .npz file (a zip archive of x_train, y_train, x_test, y_test arrays, "
                        "as numpy.savez writes); pass the right file")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in NPZ_KEYS if k not in f.files]
            if missing:
                raise DataError(
                    f"{path} lacks {', '.join(missing)}; a {name} .npz must hold x_train, y_train, x_test, y_test"
                )
            arrays = {k: f[k] for k in NPZ_KEYS}
            names = f["class_names"] if "class_names" in f.files else None
    except DataError:
        raise
    except Exception as e:  # zipfile.BadZipFile, ValueError, EOFError, OSError, pickled object arrays ...
        raise DataError(f"cannot read {path} as an .npz file ({error_summary(e)})") from None
    for k in ("x_train", "x_test"):
        if arrays[k].ndim == 3:  # grayscale NHW -> NHW1
            arrays[k] = arrays[k][..., None]
    if names is not None:
        if names.ndim != 1 or names.dtype.kind not in "US" or len(names) == 0:
            raise DataError(
                f"{path}: class_names must be a 1-D array of strings, got {names.dtype} {names.shape}; "
                "save it as np.array(['cat', 'dog', ...])"
            )
        names = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names.tolist()]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise DataError(f"{path}: class_names holds {', '.join(map(repr, twice[:3]))} more than once; "
                            "give every class its own name")
    return arrays, names


def load_npz(path: str, name: str, num_classes: int, mean, std, class_names, image_shape=None) -> Source:
    """A named dataset's ``.npz``: ``x_train, y_train, x_test, y_test`` (uint8 NHWC images, labels).

    The file must be that dataset: images of ``image_shape`` (when given), labels in
    ``[0, num_classes)`` and, if the file has a ``class_names`` array, exactly ``class_names``.
    The dataset's own normalisation and names are used, so any mismatch is a DataError that points
    at ``--dataset=npz`` (metadata from the data) instead of a silent relabel.
    """
    arrays, names = read_npz(path, name)
    fix = "for other data pass --dataset=npz (classes, names and mean/std from the data)"
    shape = tuple(arrays["x_train"].shape[1:])
    if image_shape is not None and arrays["x_train"].ndim == 4 and shape != tuple(image_shape):
        raise DataError(
            f"{path}: images are {'x'.join(map(str, shape))} but {name}'s are {'x'.join(map(str, image_shape))}; {fix}"
        )
    if names is not None and names != list(class_names):
        raise DataError(f"{path}: its class_names ({', '.join(names[:4])}, ...) are not {name}'s; {fix}")
    source = Source(name, num_classes, mean=mean, std=std, class_names=class_names, origin=path, **arrays)
    try:
        source = source.validated()
    except DataError as e:
        raise DataError(f"{e}; {fix}" if "labels span" in str(e) else str(e)) from None
    # Catch the likely mistake of pointing one dataset at another's file (e.g. cifar100 at CIFAR-10).
    present = np.unique(source.y_train).size
    if len(source.y_train) >= 10 * num_classes and present < num_classes:
        raise DataError(
            f"{path}: its train labels use only {present} of {name}'s {num_classes} classes; is it a {name} file? {fix}"
        )
    return source


def load_generic_npz(data_dir: str | None = None, **_) -> Source:
    """Your own ``.npz`` (``--dataset=npz``): its metadata come from the data, never from a named dataset.

    * classes: ``len(class_names)`` if the file has a ``class_names`` array (the labels must lie
      below it), else ``max label + 1`` over both splits, named ``"0"`` .. ``"K-1"``;
    * mean/std: per channel over the training images as stored (before ``train_subset`` and
      ``image_size``; :func:`channel_stats`);
    * images: uint8 ``[N, H, W, C]`` (or ``[N, H, W]`` for grayscale), any size and channel count.
    """
    path = find_npz(data_dir)
    if path is None:
        where = f"{data_dir} holds no .npz file" if data_dir else "--dataset=npz needs --data_dir"
        raise DataError(f"{where}; pass --data_dir=<an .npz with x_train, y_train, x_test, y_test [, class_names]>")
    arrays, names = read_npz(path, "npz")
    labels = [np.asarray(arrays[k]) for k in ("y_train", "y_test")]
    if not all(np.issubdtype(y.dtype, np.integer) and y.size for y in labels):
        raise DataError(f"{path}: y_train and y_test must be non-empty integer arrays, got "
                        f"{labels[0].dtype} {labels[0].shape} and {labels[1].dtype} {labels[1].shape}")
    top, lowest = max(int(y.max()) for y in labels), min(int(y.min()) for y in labels)
    if lowest < 0:
        raise DataError(f"{path}: labels must be class indices 0, 1, ..., got {lowest}; fix the labels")
    if names is not None:
        if top >= len(names):
            raise DataError(
                f"{path}: labels reach {top} but class_names has {len(names)} entries; "
                f"give one name per class (at least {top + 1}) or fix the labels"
            )
        num_classes = len(names)
    else:
        num_classes = top + 1
        names = [str(i) for i in range(num_classes)]
    if num_classes < 2:
        raise DataError(f"{path}: every label is 0 and no class_names name a 2nd class; a classifier needs at least 2")
    x_train = arrays["x_train"]
    if not isinstance(x_train, np.ndarray) or x_train.dtype != np.uint8 or x_train.ndim != 4:
        raise DataError(f"{path}: x_train must be uint8 [N, H, W, C] images, got {x_train.dtype} {x_train.shape}")
    mean, std = channel_stats(x_train)
    return Source("npz", num_classes, mean=mean, std=std, class_names=names, origin=path, **arrays).validated()


# ---------------------------------------------------------------------------------------------
# TensorFlow Datasets (CIFAR)


def tfds_data_dir(data_dir: str | None) -> str:
    """The tfds data_dir: ``data_dir``, else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``."""
    return os.path.expanduser(os.fspath(data_dir or os.environ.get("TFDS_DATA_DIR") or TFDS_DEFAULT_DATA_DIR))


def _tfds_to_numpy(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow as tf

    ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
    xs, ys = [], []
    for x, y in ds.batch(4096).prefetch(tf.data.AUTOTUNE):
        xs.append(x.numpy())
        ys.append(y.numpy())
    if not xs:
        raise DataError(f"tfds {builder.name} split '{split}' in {builder.data_dir} is empty; prepare it again")
    return np.concatenate(xs), np.concatenate(ys)


def load_tfds(name: str, data_dir: str | None, archive: str, url: str, num_classes: int, mean, std, fallback_names):
    """Loads a tfds image classification dataset without ever touching the network.

    Prepared in ``data_dir`` -> read. Not prepared, but the official archive sits in tfds' manual
    directory ``<data_dir>/downloads/manual/<archive>`` -> prepared offline from it (tfds resolves
    a manually placed file by the file name in its registered checksums before anything else, and
    GCS is not tried). Neither -> DataError at once.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataError(
            f"{name}: tensorflow-datasets is not importable ({error_summary(e)}); pip install -r requirements.txt, "
            "or pass --data_dir=<an .npz with x_train, y_train, x_test, y_test>"
        ) from None

    root = tfds_data_dir(data_dir)
    try:
        builder = tfds.builder(name, data_dir=root)
    except Exception as e:
        why = error_summary(e)
        raise DataError(f"{name}: tensorflow-datasets cannot open its builder in {root} ({why})") from None
    if not builder.is_prepared():
        manual_dir = os.path.join(root, "downloads", "manual")
        archive_path = os.path.join(manual_dir, archive)
        if not os.path.isfile(archive_path):
            raise DataError(
                f"{name} is not prepared in the tfds data_dir {root} and there is no archive to prepare it from "
                f"(no network here): download {url} and put it at {archive_path} (the file {archive} in "
                f"{manual_dir}), or pass --data_dir=<an .npz with x_train, y_train, x_test, y_test>"
            )
        prepare_offline(builder, manual_dir, f"{name}: preparing the tfds dataset from {archive_path}",
                        f"replace it with the official {url}")
    x_train, y_train = _tfds_to_numpy(builder, "train")
    x_test, y_test = _tfds_to_numpy(builder, "test")
    names = list(builder.info.features["label"].names)
    if len(names) != num_classes or all(n == str(i) for i, n in enumerate(names)):
        names = list(fallback_names)  # an unprepared/mocked builder only knows "0", "1", ...
    source = Source(name, num_classes, x_train, y_train, x_test, y_test, mean, std, names, origin=builder.data_dir)
    return source.validated()


def prepare_offline(builder, manual_dir: str, what: str, fix: str) -> None:
    """Prepares a tfds dataset from archives already in ``manual_dir``; never downloads.

    Any failure (wrong checksum, corrupt archive, disk full) is one DataError line:
    ``<what> failed (<why>); <fix>``.
    """
    import tensorflow_datasets as tfds

    config = tfds.download.DownloadConfig(
        manual_dir=manual_dir,
        try_download_gcs=False,
        download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS,
    )
    try:
        builder.download_and_prepare(download_config=config)
    except Exception as e:  # noqa: BLE001 - every cause becomes one line for the user
        why = error_summary(e)
        if type(e).__name__ == "NonMatchingChecksumError":
            why = "its checksum is not the official archive's"
        raise DataError(f"{what} failed ({why}); {fix}") from None


def load_cifar100(data_dir: str | None = None, **_) -> Source:
    """CIFAR-100 (fine labels): an ``.npz`` in/at ``data_dir``, else tfds ``cifar100`` in ``data_dir``."""
    mean, std = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)  # the authors' values (SJLeo/FFSD)
    npz = find_npz(data_dir)
    if npz:
        return load_npz(npz, "cifar100", 100, mean, std, CIFAR100_CLASSES, image_shape=(32, 32, 3))
    return load_tfds(
        "cifar100", data_dir, "cifar-100-binary.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
        100, mean, std, CIFAR100_CLASSES,
    )  # fmt: skip


def load_cifar10(data_dir: str | None = None, **_) -> Source:
    """CIFAR-10: an ``.npz`` in/at ``data_dir`` (e.g. ``../shared/data/cifar10``), else tfds ``cifar10``."""
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # the canonical train-set statistics
    npz = find_npz(data_dir)
    if npz:
        return load_npz(npz, "cifar10", 10, mean, std, CIFAR10_CLASSES, image_shape=(32, 32, 3))
    return load_tfds(
        "cifar10", data_dir, "cifar-10-binary.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        10, mean, std, CIFAR10_CLASSES,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST (IDX files)


def _idx_path(folder: str, stem: str) -> str | None:
    for candidate in (stem, stem + ".gz"):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    return None


def load_fashion_mnist(data_dir: str | None = None, **_) -> Source:
    """Fashion-MNIST, 28x28x1, 60k/10k, from the four IDX files (raw or .gz) in ``data_dir``."""
    folder = os.path.expanduser(os.fspath(data_dir or FASHION_MNIST_DIR))
    arrays = {}
    for key, stem in FASHION_MNIST_FILES.items():
        path = _idx_path(folder, stem)
        if path is None:
            raise DataError(
                f"fashion_mnist: {stem}[.gz] not found in {folder}; install Debian's package with "
                f"`apt-get install dataset-fashion-mnist` or pass --data_dir=<a folder with "
                f"{', '.join(s + '.gz' for s in FASHION_MNIST_FILES.values())}>"
            )
        array = read_idx(path)
        if key.startswith("x"):
            if array.ndim != 3 or array.dtype != np.uint8:
                raise DataError(f"{path}: expected uint8 images of shape (N, H, W), got {array.dtype} {array.shape}")
            if array.shape[1:] != (28, 28):
                raise DataError(
                    f"{path}: images are {array.shape[1]}x{array.shape[2]} but Fashion-MNIST's are 28x28; "
                    "for other data pass --dataset=npz with an .npz of your arrays"
                )
            array = array[..., None]
        elif array.ndim != 1 or array.dtype != np.uint8:
            raise DataError(f"{path}: expected uint8 labels of shape (N,), got {array.dtype} {array.shape}")
        arrays[key] = array
    source = Source("fashion_mnist", 10, mean=(0.2860,), std=(0.3530,), class_names=FASHION_MNIST_CLASSES,
                    origin=folder, **arrays)  # fmt: skip
    return source.validated()


# ---------------------------------------------------------------------------------------------
# Synthetic


def _interpolation_matrix(size: int, knots: int) -> np.ndarray:
    """[size, knots] linear interpolation weights from ``knots`` evenly spaced points to ``size`` pixels."""
    t = np.linspace(0.0, knots - 1.0, size)
    lo = np.minimum(np.floor(t).astype(int), knots - 2)
    frac = t - lo
    m = np.zeros((size, knots))
    m[np.arange(size), lo] = 1.0 - frac
    m[np.arange(size), lo + 1] = frac
    return m


def load_synthetic(
    data_dir: str | None = None,
    *,
    seed: int = 0,
    synthetic_classes: int = 10,
    synthetic_train: int = 512,
    synthetic_test: int = 256,
    image_size: int | None = None,
    **_,
) -> Source:
    """A learnable toy task, a pure function of its arguments (``data_dir`` is ignored).

    Each class is a fixed random low-frequency RGB pattern (a 4x4 grid of random values,
    bilinearly upsampled); an image is 128 + 48 * pattern, plus a random brightness shift
    (uniform in [-32, 32]) and Gaussian pixel noise (std 32), rounded and clipped to uint8.
    Classes are balanced (labels are ``i % K``, shuffled). Patterns, train and test use
    independent streams seeded by ``seed``, so e.g. the test set does not change with the train
    size. mean/std are measured on the train split.
    """
    if synthetic_classes < 2:
        raise DataError(f"synthetic: needs at least 2 classes, got synthetic_classes={synthetic_classes}")
    if synthetic_train < 1 or synthetic_test < 1:
        raise DataError(f"synthetic: needs at least 1 train and 1 test image, got {synthetic_train}/{synthetic_test}")
    size = int(image_size or 32)
    if size < 2:
        raise DataError(f"synthetic: image_size must be at least 2, got {size}")
    k = synthetic_classes
    grid = np.random.default_rng([seed, 0]).uniform(-1.0, 1.0, size=(k, 4, 4, 3))
    m = _interpolation_matrix(size, 4)
    patterns = np.einsum("hi,kijc,wj->khwc", m, grid, m)
    patterns /= np.abs(patterns).max(axis=(1, 2, 3), keepdims=True)
    patterns = patterns.astype(np.float32)

    def split(n: int, stream: int):
        rng = np.random.default_rng([seed, stream])
        labels = rng.permutation(np.arange(n) % k).astype(np.int32)
        brightness = rng.uniform(-32.0, 32.0, size=(n, 1, 1, 1)).astype(np.float32)
        images = 128.0 + 48.0 * patterns[labels] + brightness
        images += 32.0 * rng.standard_normal(images.shape, dtype=np.float32)
        return np.clip(np.rint(images), 0, 255).astype(np.uint8), labels

    x_train, y_train = split(synthetic_train, 1)
    x_test, y_test = split(synthetic_test, 2)
    pixels = x_train.reshape(-1, 3).astype(np.float64) / 255.0
    mean, std = tuple(pixels.mean(axis=0)), tuple(np.maximum(pixels.std(axis=0), 1e-3))
    names = [f"class_{i}" for i in range(k)]
    source = Source("synthetic", k, x_train, y_train, x_test, y_test, mean, std, names, origin=f"seed {seed}")
    return source.validated()
