"""The data module: loaders (tfds, .npz, IDX, synthetic), validation, fail-fast, augmentation,
normalisation and the per-epoch deterministic train stream.

Real-data checks read ``../shared/data/cifar10`` and ``/usr/share/datasets/fashion-mnist`` and skip
with a reason when they are absent. tfds is exercised with ``tfds.testing.mock_data`` (its own
mock of the tfds reader) and, unmocked, with an empty data_dir and a bogus manual archive.
"""

from __future__ import annotations

import gzip
import os
import struct
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from ffsd_tf.data import DATASETS, DataBundle, DataError, load_dataset, read_idx, write_idx
from ffsd_tf.data.sources import CIFAR100_CLASSES, CIFAR10_CLASSES, FASHION_MNIST_FILES

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR10 = REPO.parent / "shared" / "data" / "cifar10"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


# ---------------------------------------------------------------------------------------------
# helpers


def idx_bytes(array: np.ndarray, code: int, be_dtype: str) -> bytes:
    """An IDX file written independently of ffsd_tf.data.idx (header by hand, big-endian payload)."""
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(be_dtype).tobytes()


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def batches(ds: tf.data.Dataset, n: int):
    return [(x.numpy(), y.numpy()) for x, y in ds.take(n)]


def same_batches(a, b) -> bool:
    if len(a) != len(b):
        return False
    return all(np.array_equal(xa, xb) and np.array_equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))


def normalized(bundle: DataBundle, raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.float64) / 255.0 - np.array(bundle.mean)) / np.array(bundle.std)


def make_npz(path: Path, n_train=100, n_test=30, size=16, classes=10, seed=0, **override) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, size, size, 3), dtype=np.uint8),
        "y_train": (np.arange(n_train) % classes).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, size, size, 3), dtype=np.uint8),
        "y_test": (np.arange(n_test) % classes).astype(np.uint8),
    }
    arrays.update(override)
    np.savez(path, **arrays)
    return path


@pytest.fixture
def npz_dir(tmp_path):
    make_npz(tmp_path / "tiny.npz")
    return tmp_path


@pytest.fixture
def fake_fashion(tmp_path):
    """A tiny Fashion-MNIST folder: 30 train / 20 test 28x28 images, labels i % 10, raw and .gz files."""
    rng = np.random.default_rng(1)
    arrays = {
        "x_train": rng.integers(0, 256, (30, 28, 28), dtype=np.uint8),
        "y_train": (np.arange(30) % 10).astype(np.uint8),
        "x_test": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        "y_test": (np.arange(20) % 10).astype(np.uint8),
    }
    for i, (key, stem) in enumerate(FASHION_MNIST_FILES.items()):
        code = 0x08
        name = stem + (".gz" if i % 2 == 0 else "")  # both raw and gzip files
        write_bytes(tmp_path / name, idx_bytes(arrays[key], code, ">u1"))
    return tmp_path, arrays


# ---------------------------------------------------------------------------------------------
# registry, arguments


def test_registry_and_unknown_name():
    assert set(DATASETS) == {"cifar100", "cifar10", "fashion_mnist", "synthetic", "imagenet2012", "npz", "folder"}
    with pytest.raises(DataError) as e:
        load_dataset("imagenet")
    for name in DATASETS:
        assert name in str(e.value)
    assert "imagenet" in str(e.value)


@pytest.mark.parametrize("kwargs", [dict(batch_size=0), dict(eval_batch_size=-1), dict(train_subset=0), dict(seed=-1)])
def test_bad_arguments_raise_data_error(kwargs):
    with pytest.raises(DataError):
        load_dataset("synthetic", **kwargs)


# ---------------------------------------------------------------------------------------------
# IDX reader


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_round_trip(tmp_path, suffix):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    ints = rng.integers(-(2**31), 2**31 - 1, (4, 6), dtype=np.int64).astype(np.int32)
    p1 = write_bytes(tmp_path / f"images{suffix}", idx_bytes(images, 0x08, ">u1"))
    p2 = write_bytes(tmp_path / f"ints{suffix}", idx_bytes(ints, 0x0C, ">i4"))
    got1, got2 = read_idx(p1), read_idx(p2)
    assert got1.dtype == np.uint8 and got1.shape == (5, 7, 3) and np.array_equal(got1, images)
    assert got2.dtype == np.int32 and got2.dtype.isnative and np.array_equal(got2, ints)
    # and our writer produces what the reader reads
    floats = rng.normal(size=(3, 2, 2)).astype(np.float32)
    write_idx(tmp_path / f"floats{suffix}", floats)
    assert np.array_equal(read_idx(tmp_path / f"floats{suffix}"), floats)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_truncated_file_names_the_file(tmp_path, suffix):
    data = idx_bytes(np.zeros((10, 4, 4), np.uint8), 0x08, ">u1")
    path = write_bytes(tmp_path / f"cut-images-idx3-ubyte{suffix}", data[:-1])
    with pytest.raises(DataError, match="truncated") as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_read_idx_truncated_gzip_stream_names_the_file(tmp_path):
    full = gzip.compress(idx_bytes(np.arange(4000, dtype=np.uint8).reshape(40, 100), 0x08, ">u1"))
    path = tmp_path / "broken.gz"
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(DataError) as e:
        read_idx(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize(
    "data, what",
    [
        (bytes([1, 0, 8, 1]) + struct.pack(">I", 2) + b"ab", "magic"),
        (bytes([0, 0, 7, 1]) + struct.pack(">I", 2) + b"ab", "dtype"),
        (bytes([0, 0, 8, 2]) + struct.pack(">I", 2), "header"),
        (bytes([0, 0, 8, 1]) + struct.pack(">I", 2) + b"abc", "longer"),
        (b"\x00\x00", "truncated"),
    ],
)
def test_read_idx_rejects_corrupt_headers(tmp_path, data, what):
    path = tmp_path / "bad-idx"
    path.write_bytes(data)
    with pytest.raises(DataError, match=what) as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_idx(tmp_path / "nope")


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST


def test_fashion_mnist_from_fake_idx_folder(fake_fashion):
    folder, arrays = fake_fashion
    bundle = load_dataset("fashion_mnist", data_dir=str(folder), batch_size=8, augment=False)
    assert (bundle.num_classes, bundle.image_shape, bundle.train_size, bundle.test_size) == (10, (28, 28, 1), 30, 20)
    assert bundle.class_names[0] == "T-shirt/top" and bundle.class_names[9] == "Ankle boot"
    assert bundle.mean == (0.2860,) and bundle.std == (0.3530,)
    assert bundle.steps_per_epoch == 4 and bundle.eval_steps == 3
    raw = list(bundle.raw("train").as_numpy_iterator())
    assert raw[0][0].dtype == np.uint8 and raw[0][0].shape == (28, 28, 1)
    assert np.array_equal(np.stack([r[0] for r in raw])[..., 0], arrays["x_train"])
    assert np.array_equal([r[1] for r in raw], arrays["y_train"])
    x, y = next(iter(bundle.test_dataset()))
    assert x.shape == (8, 28, 28, 1) and y.dtype == tf.int32
    np.testing.assert_allclose(x.numpy(), normalized(bundle, arrays["x_test"][:8, ..., None]), atol=1e-6)


def test_fashion_mnist_missing_folder_says_how_to_fix(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("fashion_mnist", data_dir=str(tmp_path))
    msg = str(e.value)
    assert "apt-get install dataset-fashion-mnist" in msg and str(tmp_path) in msg and "\n" not in msg


def test_fashion_mnist_bad_labels_and_counts(fake_fashion):
    folder, arrays = fake_fashion
    (labels,) = folder.glob("train-labels-idx1-ubyte*")
    write_bytes(labels, idx_bytes(np.append(arrays["y_train"][:-1], 10).astype(np.uint8), 0x08, ">u1"))
    with pytest.raises(DataError, match=r"labels span \[0, 10\]"):
        load_dataset("fashion_mnist", data_dir=str(folder))
    write_bytes(labels, idx_bytes(arrays["y_train"][:-1], 0x08, ">u1"))
    with pytest.raises(DataError, match="30 train images but 29 train labels"):
        load_dataset("fashion_mnist", data_dir=str(folder))


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason=f"{FASHION_DIR} absent (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_real_data():
    bundle = load_dataset("fashion_mnist", train_subset=12000, batch_size=500)
    assert bundle.image_shape == (28, 28, 1) and bundle.num_classes == 10
    assert (bundle.train_size, bundle.test_size) == (12000, 10000)
    assert np.array_equal(np.bincount(bundle.y_train), [1200] * 10)  # class-balanced subset
    assert np.array_equal(np.bincount(bundle.y_test), [1000] * 10)
    x, y = next(iter(bundle.train_stream(0)))
    assert x.shape == (500, 28, 28, 1) and x.dtype == tf.float32 and y.dtype == tf.int32
    full_mean = bundle.x_test.mean() / 255.0
    assert abs(full_mean - 0.2860) < 0.01  # the published statistics fit the data


# ---------------------------------------------------------------------------------------------
# CIFAR through tfds


def test_cifar100_fails_fast_without_data(tmp_path):
    start = time.perf_counter()
    with pytest.raises(DataError) as e:
        load_dataset("cifar100", data_dir=str(tmp_path))
    assert time.perf_counter() - start < 10
    msg = str(e.value)
    assert "cifar-100-binary.tar.gz" in msg and str(tmp_path) in msg
    assert os.path.join(str(tmp_path), "downloads", "manual") in msg and "\n" not in msg


def test_cifar10_bogus_manual_archive_fails_fast_offline(tmp_path):
    """Real tfds finds the manual archive offline (else it would retry the download for minutes)."""
    manual = tmp_path / "downloads" / "manual"
    manual.mkdir(parents=True)
    (manual / "cifar-10-binary.tar.gz").write_bytes(b"not the archive")
    start = time.perf_counter()
    with pytest.raises(DataError, match="checksum") as e:
        load_dataset("cifar10", data_dir=str(tmp_path))
    assert time.perf_counter() - start < 10
    assert str(manual / "cifar-10-binary.tar.gz") in str(e.value)


def test_cifar100_tfds_prepared_data_dir(tmp_path):
    """A prepared tfds data_dir (metadata written by tfds itself), examples from tfds' mock reader."""
    names = [f"fine_{i}" for i in range(100)]
    builder = tfds.builder("cifar100", data_dir=str(tmp_path))
    builder.info.features["label"].names = names
    os.makedirs(builder.data_dir)
    builder.info.write_to_directory(builder.data_dir)
    with tfds.testing.mock_data(num_examples=40, data_dir=str(tmp_path)):
        bundle = load_dataset("cifar100", data_dir=str(tmp_path), batch_size=16)
    assert bundle.num_classes == 100 and bundle.image_shape == (32, 32, 3)
    assert (bundle.train_size, bundle.test_size) == (40, 40)
    assert bundle.class_names == names
    assert bundle.mean == (0.5071, 0.4865, 0.4409) and bundle.std == (0.2673, 0.2564, 0.2762)
    assert bundle.x_train.dtype == np.uint8 and bundle.y_train.dtype == np.int32
    assert 0 <= bundle.y_train.min() and bundle.y_train.max() < 100
    x, y = next(iter(bundle.test_dataset()))
    assert x.dtype == tf.float32 and y.dtype == tf.int32 and x.shape == (16, 32, 32, 3)
    np.testing.assert_allclose(x.numpy(), normalized(bundle, bundle.x_test[:16]), atol=1e-6)
    assert abs(float(tf.reduce_mean(x))) < 3  # normalised, not raw pixels


def test_cifar10_tfds_prepared_from_manual_archive(tmp_path):
    """Unprepared + manual archive present -> download_and_prepare (tfds' mock: a no-op) -> read."""
    manual = tmp_path / "downloads" / "manual"
    manual.mkdir(parents=True)
    (manual / "cifar-10-binary.tar.gz").write_bytes(b"placeholder")
    with tfds.testing.mock_data(num_examples=24):
        bundle = load_dataset("cifar10", data_dir=str(tmp_path), batch_size=10, partial_batch="keep")
    assert bundle.num_classes == 10 and bundle.image_shape == (32, 32, 3)
    assert bundle.class_names == CIFAR10_CLASSES  # the mock builder only knows "0".."9"
    assert bundle.mean == (0.4914, 0.4822, 0.4465) and bundle.std == (0.2470, 0.2435, 0.2616)
    assert bundle.y_train.max() < 10 and bundle.steps_per_epoch == 3
    x, y = batches(bundle.train_stream(0), 3)[-1]
    assert x.shape == (4, 32, 32, 3) and y.shape == (4,)  # the last, partial batch is kept (policy keep)


# ---------------------------------------------------------------------------------------------
# .npz


def test_npz_folder_and_file(tmp_path):
    make_npz(tmp_path / "c10.npz", size=32)
    a = load_dataset("cifar10", data_dir=str(tmp_path), batch_size=32)
    b = load_dataset("cifar10", data_dir=str(tmp_path / "c10.npz"), batch_size=32)
    with np.load(tmp_path / "c10.npz") as f:
        for bundle in (a, b):
            assert np.array_equal(bundle.x_train, f["x_train"]) and np.array_equal(bundle.y_test, f["y_test"])
            assert bundle.y_train.dtype == np.int32 and bundle.image_shape == (32, 32, 3)
            assert bundle.class_names == CIFAR10_CLASSES
            assert bundle.mean == (0.4914, 0.4822, 0.4465)  # a CIFAR-10 file keeps CIFAR-10's statistics
    x, y = next(iter(a.raw("test")))
    assert x.dtype == tf.uint8 and y.dtype == tf.int32 and x.shape == (32, 32, 3)


def test_npz_cifar100_and_column_labels(tmp_path):
    make_npz(tmp_path / "c100.npz", n_train=200, classes=100, size=32, y_test=(np.arange(30) % 100).reshape(-1, 1))
    bundle = load_dataset("cifar100", data_dir=str(tmp_path))
    assert bundle.num_classes == 100 and bundle.class_names == CIFAR100_CLASSES
    assert bundle.y_train.max() == 99 and bundle.y_test.shape == (30,)


def test_npz_errors(tmp_path):
    make_npz(tmp_path / "bad.npz", size=32, y_train=np.full(100, 10, np.uint8))
    with pytest.raises(DataError, match=r"labels span \[10, 10\].*10 classes"):
        load_dataset("cifar10", data_dir=str(tmp_path / "bad.npz"))
    make_npz(tmp_path / "short.npz", size=32, y_train=np.zeros(99, np.uint8))
    with pytest.raises(DataError, match="100 train images but 99 train labels"):
        load_dataset("cifar10", data_dir=str(tmp_path / "short.npz"))
    np.savez(tmp_path / "nokeys.npz", x_train=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(DataError, match="lacks y_train"):
        load_dataset("cifar10", data_dir=str(tmp_path / "nokeys.npz"))
    with pytest.raises(DataError, match="several .npz"):
        load_dataset("cifar10", data_dir=str(tmp_path))
    make_npz(tmp_path / "float.npz", size=32, x_train=np.zeros((100, 32, 32, 3), np.float32))
    with pytest.raises(DataError, match="uint8"):
        load_dataset("cifar10", data_dir=str(tmp_path / "float.npz"))
    # a CIFAR-10 file given as CIFAR-100 is caught, not trained on
    make_npz(tmp_path / "ten.npz", n_train=1000, size=32)
    with pytest.raises(DataError, match="only 10 of cifar100's 100 classes"):
        load_dataset("cifar100", data_dir=str(tmp_path / "ten.npz"))


def five_class_npz(path: Path, **override) -> Path:
    """The issue's case: 5 classes of 24x24 RGB images, not CIFAR-10."""
    return make_npz(path, n_train=60, n_test=20, size=24, classes=5, seed=4, **override)


def test_own_npz_named_as_cifar10_is_refused_not_relabelled(tmp_path):
    """Regression (issue 15): a 5-class 24x24 .npz as --dataset=cifar10 trained with CIFAR-10's metadata."""
    path = five_class_npz(tmp_path / "my5.npz")
    with pytest.raises(DataError, match=r"images are 24x24x3 but cifar10's are 32x32x3.*--dataset=npz") as e:
        load_dataset("cifar10", data_dir=str(path))
    assert "\n" not in str(e.value)
    # The right shape but its own class names: refused too, never silently renamed.
    make_npz(tmp_path / "named.npz", size=32, class_names=np.array(CIFAR10_CLASSES[::-1]))
    with pytest.raises(DataError, match="class_names .* are not cifar10's"):
        load_dataset("cifar10", data_dir=str(tmp_path / "named.npz"))
    # Labels beyond the named dataset's classes: one line naming the fix.
    make_npz(tmp_path / "eleven.npz", size=32, classes=11)
    with pytest.raises(DataError, match=r"labels span \[0, 10\].*--dataset=npz"):
        load_dataset("cifar10", data_dir=str(tmp_path / "eleven.npz"))


def test_own_npz_takes_classes_names_and_statistics_from_the_data(tmp_path):
    path = five_class_npz(tmp_path / "my5.npz")
    bundle = load_dataset("npz", data_dir=str(path), batch_size=8)
    assert (bundle.num_classes, bundle.image_shape) == (5, (24, 24, 3))
    assert bundle.class_names == ["0", "1", "2", "3", "4"]
    with np.load(path) as f:
        pixels = f["x_train"].astype(np.float64) / 255.0
    np.testing.assert_allclose(bundle.mean, pixels.mean(axis=(0, 1, 2)), rtol=1e-9)
    np.testing.assert_allclose(bundle.std, pixels.std(axis=(0, 1, 2)), rtol=1e-9)
    x, _ = next(iter(bundle.test_dataset()))
    np.testing.assert_allclose(x.numpy(), normalized(bundle, bundle.x_test[:8]), atol=1e-5)

    names = np.array(["ant", "bee", "cat", "dog", "eel", "fox"])  # a 6th class without images yet
    bundle = load_dataset("npz", data_dir=str(five_class_npz(tmp_path / "named.npz", class_names=names)))
    assert bundle.num_classes == 6 and bundle.class_names == list(names)


@pytest.mark.parametrize(
    "override, needle",
    [
        (dict(class_names=np.array(["ant", "bee", "cat"])), "labels reach 4 but class_names has 3 entries"),
        (dict(class_names=np.array([1, 2, 3, 4, 5])), "class_names must be a 1-D array of strings"),
        (dict(class_names=np.array(["ant", "bee", "ant", "dog", "eel"])), "holds 'ant' more than once"),
        (dict(class_names=np.array(["ant", "bee", "cat\ndog", "dog", "eel"])), "holds a line break"),
        (dict(y_train=np.zeros(60, np.uint8), y_test=np.zeros(20, np.uint8)), "needs at least 2"),
        (dict(y_train=np.full(60, -1, np.int64)), "labels must be class indices 0, 1, ..., got -1"),
        (dict(y_train=np.full(60, -1, np.int64), y_test=np.full(20, -1, np.int64)), "got -1"),
        (dict(x_train=np.zeros((60, 24, 24, 3), np.float32)), "x_train must be uint8"),
    ],
)
def test_own_npz_errors_are_one_line(tmp_path, override, needle):
    path = five_class_npz(tmp_path / "bad.npz", **override)
    with pytest.raises(DataError, match=needle) as e:
        load_dataset("npz", data_dir=str(path))
    assert "\n" not in str(e.value)


def test_own_npz_needs_a_file(tmp_path):
    with pytest.raises(DataError, match="--dataset=npz needs --data_dir"):
        load_dataset("npz")
    with pytest.raises(DataError, match="holds no .npz file"):
        load_dataset("npz", data_dir=str(tmp_path))


def test_fashion_mnist_refuses_images_of_another_size(fake_fashion):
    folder, arrays = fake_fashion
    (images,) = folder.glob("train-images-idx3-ubyte*")
    write_bytes(images, idx_bytes(arrays["x_train"][:, :24, :24], 0x08, ">u1"))
    with pytest.raises(DataError, match="images are 24x24 but Fashion-MNIST's are 28x28"):
        load_dataset("fashion_mnist", data_dir=str(folder))


@pytest.mark.skipif(not SHARED_CIFAR10.is_dir(), reason=f"{SHARED_CIFAR10} absent (shared real CIFAR-10 data)")
def test_real_cifar10_npz():
    bundle = load_dataset("cifar10", data_dir=str(SHARED_CIFAR10), batch_size=256)
    assert (bundle.train_size, bundle.test_size, bundle.num_classes) == (50000, 10000, 10)
    assert bundle.image_shape == (32, 32, 3) and bundle.steps_per_epoch == 195  # 80-image remainder < 128: dropped
    assert np.array_equal(np.bincount(bundle.y_train), [5000] * 10)
    _, y = next(iter(bundle.train_stream(0)))
    assert len(np.unique(y.numpy())) >= 8  # the class-sorted file is shuffled


# ---------------------------------------------------------------------------------------------
# the train stream: determinism, epochs, augmentation, normalisation


def test_epoch_k_of_a_run_equals_a_run_resumed_at_k(npz_dir):
    a = load_dataset("npz", data_dir=str(npz_dir), batch_size=32, seed=3, partial_batch="keep")
    b = load_dataset("npz", data_dir=str(npz_dir), batch_size=32, seed=3, partial_batch="keep")
    steps = a.steps_per_epoch
    assert steps == 4
    run = batches(a.train_stream(0), 3 * steps)
    assert [len(y) for _, y in run] == [32, 32, 32, 4] * 3
    epochs = [run[i * steps : (i + 1) * steps] for i in range(3)]
    assert same_batches(batches(b.train_stream(2), steps), epochs[2])
    assert same_batches(batches(b.train_stream(1), 2 * steps), epochs[1] + epochs[2])
    assert not same_batches(epochs[0], epochs[1]) and not same_batches(epochs[1], epochs[2])
    labels = [np.concatenate([y for _, y in e]) for e in epochs]
    assert not np.array_equal(labels[0], labels[1])  # a new order every epoch
    for lab in labels:
        assert np.array_equal(np.sort(lab), np.sort(a.y_train))
    other = load_dataset("npz", data_dir=str(npz_dir), batch_size=32, seed=4, partial_batch="keep")
    assert not same_batches(batches(other.train_stream(0), steps), epochs[0])


@pytest.mark.parametrize(
    "n, batch, policy, sizes",
    [
        (100, 32, "drop_small", [32, 32, 32]),  # remainder 4 < 16: dropped
        (100, 32, "keep", [32, 32, 32, 4]),  # the authors' loader
        (100, 32, "drop", [32, 32, 32]),
        (110, 32, "drop_small", [32, 32, 32]),  # remainder 14 < 16: dropped
        (120, 32, "drop_small", [32, 32, 32, 24]),  # remainder 24 >= 16: kept
        (120, 32, "drop", [32, 32, 32]),
        (96, 32, "drop_small", [32, 32, 32]),  # no remainder
        (20, 32, "drop", [20]),  # smaller than one batch: one partial batch, never an empty epoch
    ],
)
def test_partial_batch_policy(tmp_path, n, batch, policy, sizes):
    path = make_npz(tmp_path / "d.npz", n_train=n, n_test=10, size=8)
    bundle = load_dataset("npz", data_dir=str(path), batch_size=batch, seed=1, partial_batch=policy)
    assert bundle.steps_per_epoch == len(sizes)
    got = batches(bundle.train_stream(0), 3 * len(sizes))
    assert [len(y) for _, y in got] == sizes * 3  # epochs stay aligned with fit's steps_per_epoch
    # A dropped remainder is the tail of a reshuffled order: over epochs every image is trained on.
    seen = np.concatenate([y for _, y in batches(bundle.train_stream(0), 20 * len(sizes))])
    assert len(seen) == 20 * sum(sizes)


def test_default_policy_drops_a_tiny_last_batch(tmp_path):
    """Regression (issue 13): 5,000 images at batch 128 gave a 40th step of 8 images every epoch."""
    path = make_npz(tmp_path / "d.npz", n_train=5000, n_test=10, size=8)
    bundle = load_dataset("npz", data_dir=str(path), batch_size=128)
    assert bundle.partial_batch == "drop_small" and bundle.steps_per_epoch == 39
    assert {len(y) for _, y in batches(bundle.train_stream(3), 39)} == {128}
    keep = load_dataset("npz", data_dir=str(path), batch_size=128, partial_batch="keep")
    assert keep.steps_per_epoch == 40


def test_every_image_is_trained_on_when_the_remainder_is_dropped(tmp_path):
    path = make_npz(tmp_path / "d.npz", n_train=50, n_test=10, size=8)
    bundle = load_dataset("npz", data_dir=str(path), batch_size=16, augment=False, seed=2)
    assert bundle.steps_per_epoch == 3  # 50 = 3 x 16 + 2
    images = np.concatenate([x for x, _ in batches(bundle.train_stream(0), 3 * 10)])
    pixels = np.rint((images * np.array(bundle.std) + np.array(bundle.mean)) * 255).astype(np.uint8)
    flat = {p.tobytes() for p in pixels}
    assert len(flat) == len({p.tobytes() for p in bundle.x_train})  # 10 epochs cover all 50


def test_unknown_partial_batch_policy_is_a_data_error(npz_dir):
    with pytest.raises(DataError, match="partial_batch must be one of drop_small, keep, drop"):
        load_dataset("npz", data_dir=str(npz_dir), partial_batch="sometimes")


def test_each_epoch_is_a_full_shuffle(npz_dir):
    bundle = load_dataset("npz", data_dir=str(npz_dir), batch_size=32, augment=False, partial_batch="keep")
    images = np.concatenate([x for x, _ in batches(bundle.train_stream(5), bundle.steps_per_epoch)])
    pixels = np.rint((images * np.array(bundle.std) + np.array(bundle.mean)) * 255).astype(np.uint8)
    flat = lambda a: a.reshape(len(a), -1)  # noqa: E731
    got, want = flat(pixels), flat(bundle.x_train)
    assert np.array_equal(got[np.lexsort(got.T)], want[np.lexsort(want.T)])  # every image exactly once
    assert not np.array_equal(got, want)  # in a new order


def test_augmentation_is_reflect_pad_crop_flip(npz_dir):
    aug = load_dataset("npz", data_dir=str(npz_dir), batch_size=50, seed=7)
    plain = load_dataset("npz", data_dir=str(npz_dir), batch_size=50, seed=7, augment=False)
    (xa, ya), (xp, yp) = batches(aug.train_stream(0), 1)[0], batches(plain.train_stream(0), 1)[0]
    assert np.array_equal(ya, yp)  # same order: the shuffle does not depend on augmentation
    assert not np.allclose(xa, xp)
    originals = np.rint((xp * np.array(plain.std) + np.array(plain.mean)) * 255)
    padded = np.pad(originals, [(0, 0), (4, 4), (4, 4), (0, 0)], mode="reflect")  # torch/tf REFLECT
    aug_pixels = xa * np.array(aug.std) + np.array(aug.mean)
    flips, offsets = 0, set()
    for i in range(len(xa)):
        matches = [
            (dy, dx, f)
            for dy in range(9)
            for dx in range(9)
            for f in (0, 1)
            if np.allclose(
                (padded[i, dy : dy + 16, dx : dx + 16][:, ::-1] if f else padded[i, dy : dy + 16, dx : dx + 16]) / 255,
                aug_pixels[i],
                atol=1e-5,
            )
        ]
        assert matches, f"augmented image {i} is no flip/crop of its reflect-padded original"
        flips += matches[0][2]
        offsets.add(matches[0][:2])
    assert 10 <= flips <= 40 and len(offsets) > 10  # random flips, varied crops


def test_test_dataset_and_normalize(npz_dir):
    bundle = load_dataset("npz", data_dir=str(npz_dir), batch_size=32, eval_batch_size=8)
    assert bundle.eval_steps == 4
    first = batches(bundle.test_dataset(), 10)
    assert len(first) == 4 and [len(y) for _, y in first] == [8, 8, 8, 6]
    assert same_batches(first, batches(bundle.test_dataset(), 10))  # not shuffled, not augmented
    images = np.concatenate([x for x, _ in first])
    assert images.dtype == np.float32
    np.testing.assert_allclose(images, normalized(bundle, bundle.x_test), atol=1e-6, rtol=0)
    assert np.array_equal(np.concatenate([y for _, y in first]), bundle.y_test)
    helper = bundle.normalize(tf.constant(bundle.x_test[:3], tf.float32)).numpy()
    np.testing.assert_allclose(helper, normalized(bundle, bundle.x_test[:3]), atol=1e-6, rtol=0)


def test_image_size_resizes_both_splits(tmp_path):
    x = np.zeros((20, 32, 32, 3), np.uint8)
    x[:, :, :, 0] = 200  # a flat colour survives bilinear resizing unchanged
    make_npz(tmp_path / "c.npz", n_train=20, n_test=20, size=32, x_train=x, x_test=x)
    bundle = load_dataset("cifar10", data_dir=str(tmp_path), image_size=12, batch_size=20)
    assert bundle.image_shape == (12, 12, 3) and bundle.x_test.shape == (20, 12, 12, 3)
    assert np.all(bundle.x_train[..., 0] == 200) and np.all(bundle.x_train[..., 1:] == 0)
    xb, _ = batches(bundle.train_stream(0), 1)[0]
    assert xb.shape == (20, 12, 12, 3)


def test_subsets_are_seeded_and_balanced():
    kw = dict(synthetic_train=200, synthetic_test=100, train_subset=50, test_subset=30, image_size=8)
    a, b = load_dataset("synthetic", seed=1, **kw), load_dataset("synthetic", seed=1, **kw)
    assert (a.train_size, a.test_size) == (50, 30)
    assert np.array_equal(np.bincount(a.y_train), [5] * 10) and np.array_equal(np.bincount(a.y_test), [3] * 10)
    assert np.array_equal(a.x_train, b.x_train)
    with pytest.raises(DataError, match="train_subset=201 exceeds the 200"):
        load_dataset("synthetic", synthetic_train=200, train_subset=201)


# ---------------------------------------------------------------------------------------------
# synthetic


def test_synthetic_is_deterministic_and_self_describing():
    a = load_dataset("synthetic", seed=5, synthetic_train=64, synthetic_test=32)
    b = load_dataset("synthetic", seed=5, synthetic_train=64, synthetic_test=32)
    c = load_dataset("synthetic", seed=6, synthetic_train=64, synthetic_test=32)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, c.x_train)
    assert a.image_shape == (32, 32, 3) and a.num_classes == 10 and a.x_train.dtype == np.uint8
    np.testing.assert_allclose(a.mean, a.x_train.reshape(-1, 3).mean(0) / 255, atol=1e-9)
    np.testing.assert_allclose(a.std, a.x_train.reshape(-1, 3).std(0) / 255, atol=1e-9)
    d = load_dataset("synthetic", synthetic_classes=3, synthetic_train=30, synthetic_test=9, image_size=16)
    assert d.num_classes == 3 and d.image_shape == (16, 16, 3) and len(d.class_names) == 3
    assert np.array_equal(np.bincount(d.y_train), [10, 10, 10])


def test_synthetic_is_learnable():
    keras.utils.set_random_seed(0)
    bundle = load_dataset("synthetic", batch_size=64, seed=0)
    model = keras.Sequential([keras.Input(bundle.image_shape), keras.layers.Flatten(), keras.layers.Dense(10)])
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])  # fmt: skip
    model.fit(bundle.train_stream(0), steps_per_epoch=bundle.steps_per_epoch, epochs=2, shuffle=False, verbose=0)
    _, accuracy = model.evaluate(bundle.test_dataset(), verbose=0)
    assert accuracy > 0.6  # chance: 0.1
