"""ImageNet (tfds ``imagenet2012``), streamed: fail-fast, transforms, shapes, per-epoch determinism.

Two kinds of data, neither touching the network:

* ``tfds.testing.mock_data``: tfds' own mock reader (random JPEGs of random sizes 5..49 px, random
  labels in [0, 1000)); the unprepared builder is "prepared" by the mock's no-op from placeholder
  archives, the route a real first run takes.
* a *really prepared* tiny ``imagenet2012``: tfds' own ``download_and_prepare`` run offline on
  fake ``ILSVRC2012_img_{train,val}.tar`` archives (3 synsets x 5 JPEGs, 7 validation JPEGs,
  4 shards per split), so the real tfds reader, its file shuffle and our seeds are exercised.
"""

import io
import os
import tarfile
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from ffsd_tf.data import DATASETS, DataError, load_dataset
from ffsd_tf.data.imagenet import (
    ARCHIVES,
    MEAN,
    STD,
    ImageNetBundle,
    random_resized_crop_window,
    resize_shorter_center_crop,
)

SYNSETS = ("n01440764", "n01443537", "n01484850")  # labels 0, 1, 2 in tfds' sorted label list
PER_CLASS = 5
NUM_VAL = 7
LOW = min((0 - m) / s for m, s in zip(MEAN, STD))  # the range of normalised pixels
HIGH = max((1 - m) / s for m, s in zip(MEAN, STD))


def _jpeg(rng, height, width):
    return tf.io.encode_jpeg(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).numpy()


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_fake_archives(root):
    """ILSVRC2012-shaped archives: train = one inner tar per synset, val = flat JPEGs."""
    rng = np.random.default_rng(0)
    manual = os.path.join(root, "downloads", "manual")
    os.makedirs(manual, exist_ok=True)
    with tarfile.open(os.path.join(manual, ARCHIVES[0]), "w") as outer:
        for synset in SYNSETS:
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as inner:
                for i in range(PER_CLASS):
                    size = rng.integers(24, 90, 2)
                    _add(inner, f"{synset}_{i}.JPEG", _jpeg(rng, *size))
            _add(outer, f"{synset}.tar", buf.getvalue())
    with tarfile.open(os.path.join(manual, ARCHIVES[1]), "w") as val:
        for i in range(1, NUM_VAL + 1):
            _add(val, f"ILSVRC2012_val_{i:08d}.JPEG", _jpeg(rng, *rng.integers(24, 90, 2)))
    return manual


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A tfds data_dir holding a really prepared (tiny) imagenet2012, 4 shards per split."""
    root = str(tmp_path_factory.mktemp("imagenet"))
    manual = write_fake_archives(root)
    builder = tfds.builder("imagenet2012", data_dir=root)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual, try_download_gcs=False, num_shards=4)
    )
    assert builder.info.splits["train"].num_shards == 4
    return root


def batches(ds, n):
    return [(x.numpy(), y.numpy()) for x, y in ds.take(n)]


# ---------------------------------------------------------------------------------------------
# registry and fail-fast


def test_registered_as_a_streaming_dataset():
    assert "imagenet2012" in DATASETS and getattr(DATASETS["imagenet2012"], "streams", False)


def test_fails_fast_on_an_empty_data_dir(tmp_path):
    start = time.perf_counter()
    with pytest.raises(DataError) as e:
        load_dataset("imagenet2012", data_dir=str(tmp_path))
    assert time.perf_counter() - start < 10
    msg = str(e.value)
    assert "\n" not in msg and "not prepared" in msg
    assert ARCHIVES[0] in msg and ARCHIVES[1] in msg
    assert os.path.join(str(tmp_path), "downloads", "manual") in msg


def test_names_the_missing_archive(tmp_path):
    manual = tmp_path / "downloads" / "manual"
    manual.mkdir(parents=True)
    (manual / ARCHIVES[0]).write_bytes(b"placeholder")
    with pytest.raises(DataError, match=rf"archives are missing \({ARCHIVES[1]};"):
        load_dataset("imagenet2012", data_dir=str(tmp_path))


# ---------------------------------------------------------------------------------------------
# tfds' mock reader (variable-size random JPEGs)


@pytest.fixture
def mocked(tmp_path):
    manual = tmp_path / "downloads" / "manual"
    manual.mkdir(parents=True)
    for name in ARCHIVES:
        (manual / name).write_bytes(b"placeholder")  # unprepared + archives -> download_and_prepare (a mock no-op)
    with tfds.testing.mock_data(num_examples=10):
        yield str(tmp_path)


def test_mock_train_stream_and_eval_shapes(mocked):
    bundle = load_dataset("imagenet2012", data_dir=mocked, batch_size=4, eval_batch_size=6, seed=1)
    assert isinstance(bundle, ImageNetBundle)
    assert (bundle.num_classes, bundle.image_shape) == (1000, (224, 224, 3))
    assert (bundle.train_size, bundle.test_size) == (10, 10)
    assert (bundle.steps_per_epoch, bundle.batch_size, bundle.eval_batch_size) == (3, 4, 6)
    assert bundle.mean == MEAN and bundle.std == STD and len(bundle.class_names) == 1000
    assert bundle.class_names[0] == "n01440764"
    train = batches(bundle.train_stream(0), 4)
    assert [x.shape for x, _ in train] == [(4, 224, 224, 3), (4, 224, 224, 3), (2, 224, 224, 3), (4, 224, 224, 3)]
    for x, y in train:
        assert x.dtype == np.float32 and y.dtype == np.int32
        assert LOW - 1e-4 <= x.min() and x.max() <= HIGH + 1e-4  # normalised pixels, not raw 0..255
        assert 0 <= y.min() and y.max() < 1000
    test = batches(bundle.test_dataset(), 5)
    assert [x.shape for x, _ in test] == [(6, 224, 224, 3), (4, 224, 224, 3)]
    raw_x, raw_y = next(iter(bundle.raw("test")))
    assert raw_x.shape == (224, 224, 3) and raw_x.dtype == tf.uint8 and raw_y.dtype == tf.int32
    np.testing.assert_allclose(bundle.normalize(raw_x[None]).numpy(), test[0][0][:1], atol=0.5 / 255 / min(STD) + 1e-5)


def test_mock_image_size_and_subsets(mocked):
    bundle = load_dataset("imagenet2012", data_dir=mocked, batch_size=4, image_size=32, train_subset=6, test_subset=3)
    assert bundle.image_shape == (32, 32, 3) and bundle.resize_to == 37
    assert (bundle.train_size, bundle.test_size, bundle.steps_per_epoch) == (6, 3, 2)
    assert [x.shape for x, _ in batches(bundle.train_stream(5), 3)] == [(4, 32, 32, 3), (2, 32, 32, 3), (4, 32, 32, 3)]
    assert [x.shape for x, _ in batches(bundle.test_dataset(), 3)] == [(3, 32, 32, 3)]
    with pytest.raises(DataError, match="exceeds"):
        load_dataset("imagenet2012", data_dir=mocked, train_subset=11)


# ---------------------------------------------------------------------------------------------
# a really prepared (tiny) imagenet2012


def test_prepared_epochs_are_complete_and_keyed_by_seed_and_epoch(prepared):
    bundle = load_dataset("imagenet2012", data_dir=prepared, batch_size=4, seed=7, image_size=32)
    n = len(SYNSETS) * PER_CLASS
    assert (bundle.train_size, bundle.test_size, bundle.steps_per_epoch) == (n, NUM_VAL, 4)
    run = batches(bundle.train_stream(0), 12)  # epochs 0, 1, 2
    assert [x.shape[0] for x, _ in run] == [4, 4, 4, 3] * 3  # the last batch of every epoch is partial
    epochs = [run[4 * e : 4 * e + 4] for e in range(3)]
    for epoch in epochs:  # every example exactly once per epoch
        labels = np.concatenate([y for _, y in epoch])
        assert np.array_equal(np.bincount(labels, minlength=3), [PER_CLASS] * 3)
    pixels = [np.concatenate([x for x, _ in e]) for e in epochs]
    assert not np.array_equal(pixels[0], pixels[1]) and not np.array_equal(pixels[1], pixels[2])  # new draws each epoch
    # Resuming at epoch 2 replays epoch 2 exactly: order, crops and flips.
    resumed = batches(bundle.train_stream(2), 4)
    for (xa, ya), (xb, yb) in zip(epochs[2], resumed):
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(xa, xb)
    # Same seed, a fresh bundle: the same stream; another seed: another one.
    def epoch1(seed):
        bundle_s = load_dataset("imagenet2012", data_dir=prepared, batch_size=4, seed=seed, image_size=32)
        return batches(bundle_s.train_stream(1), 4)

    for (xa, _), (xb, _) in zip(epochs[1], epoch1(7)):
        np.testing.assert_array_equal(xa, xb)
    other = epoch1(8)
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(epochs[1], other))


def test_prepared_stream_ignores_tensorflow_global_seed(prepared):
    """run.py seeds TF globally (also with 0); the stream depends on the bundle's seed alone."""
    bundle = load_dataset("imagenet2012", data_dir=prepared, batch_size=8, seed=0, image_size=16)
    reference = batches(bundle.epoch_dataset(3), 2)
    try:
        for global_seed in (0, 5):
            tf.random.set_seed(global_seed)
            for (xa, ya), (xb, yb) in zip(reference, batches(bundle.train_stream(3), 2)):
                np.testing.assert_array_equal(ya, yb)
                np.testing.assert_array_equal(xa, xb)
    finally:
        tf.random.set_seed(None)


def test_prepared_eval_is_ordered_and_center_cropped(prepared):
    bundle = load_dataset("imagenet2012", data_dir=prepared, batch_size=4, eval_batch_size=5)
    first = batches(bundle.test_dataset(), 2)
    second = batches(bundle.test_dataset(), 2)
    assert [x.shape for x, _ in first] == [(5, 224, 224, 3), (2, 224, 224, 3)]
    for (xa, ya), (xb, yb) in zip(first, second):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    labels = np.concatenate([y for _, y in first])
    assert labels.dtype == np.int32 and 0 <= labels.min() and labels.max() < 1000
    x, _ = next(iter(bundle.raw("train")))
    assert x.shape == (224, 224, 3) and x.dtype == tf.uint8


def test_training_with_augment_off_uses_the_eval_transform(prepared):
    bundle = load_dataset("imagenet2012", data_dir=prepared, batch_size=15, seed=0, augment=False, image_size=32)
    x, y = next(iter(bundle.train_stream(0)))
    reference = {}
    for image, label in bundle.raw("train"):
        reference.setdefault(int(label), []).append(bundle.normalize(image).numpy())
    for xi, yi in zip(x.numpy(), y.numpy()):  # each is (up to uint8 rounding) an eval-transformed image of its class
        assert min(np.abs(xi - r).max() for r in reference[int(yi)]) < 0.5 / 255 / min(STD) + 1e-5


# ---------------------------------------------------------------------------------------------
# transforms


def _torchvision_area_fraction(height, width, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision.transforms.RandomResizedCrop.get_params, the crop's area fraction (NumPy draws)."""
    import math

    area = height * width
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return h * w / area
    return 1.0


def test_random_resized_crop_window_follows_torchvision():
    shape = tf.constant([375, 500, 3])
    fractions, ratios = [], []
    for i in range(300):
        top, left, h, w = random_resized_crop_window(shape, tf.constant([3, i], tf.int64)).numpy()
        assert 0 <= top <= 375 - h and 0 <= left <= 500 - w and h > 0 and w > 0
        fractions.append(h * w / (375 * 500))
        ratios.append(w / h)
    fractions, ratios = np.array(fractions), np.array(ratios)
    assert fractions.min() >= 0.075 and fractions.max() <= 1.0
    assert ratios.min() >= 0.74 and ratios.max() <= 1.36
    # The same distribution as torchvision's rule (a NumPy transcription of RandomResizedCrop.get_params).
    rng = np.random.default_rng(0)
    reference = np.array([_torchvision_area_fraction(375, 500, rng) for _ in range(20_000)])
    for q in (25, 50, 75):
        assert abs(np.percentile(fractions, q) - np.percentile(reference, q)) < 0.05, q
    again = random_resized_crop_window(shape, tf.constant([3, 5], tf.int64)).numpy()
    np.testing.assert_array_equal(again, random_resized_crop_window(shape, tf.constant([3, 5], tf.int64)).numpy())
    # No try fits a 10 x 200 image: torchvision's fallback, whole height, width clamped to ratio 4/3, centered.
    np.testing.assert_array_equal(
        random_resized_crop_window(tf.constant([10, 200, 3]), tf.constant([0, 0], tf.int64)).numpy(), [0, 93, 10, 13]
    )


def test_resize_shorter_side_then_center_crop_geometry():
    # Shorter side already 256: the resize is the identity; torchvision's crop offsets int(round((H - S) / 2)).
    image = tf.constant(np.random.default_rng(1).integers(0, 256, (256, 333, 3)), tf.float32)
    out = resize_shorter_center_crop(image, 224, 256).numpy()
    np.testing.assert_allclose(out, image.numpy()[16:240, 54:278], atol=1e-3)  # round(54.5) = 54 (half to even)
    tall = resize_shorter_center_crop(tf.zeros((500, 300, 3)), 224, 256)
    assert tuple(tall.shape) == (224, 224, 3)
