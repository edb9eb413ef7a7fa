"""``--dataset=folder``: your own images in class subfolders, from the loader to the exported model.

The images are generated here (one colour per class plus noise) and written as PNG with
``tf.io.encode_png``; the other formats (JPEG, BMP, GIF) are written with Pillow when it is there.
The end-to-end test trains 1 epoch through the CLI, exports, and checks that the SavedModel and the
TFLite file carry the folder's class names and the mean/std NumPy computes over the training images.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from ffsd_tf.data import DATASETS, DataError, load_dataset

from tests.conftest import ROOT, child_env
CLASSES = ["cat", "dog", "eel", "fox", "gnu"]  # sorted, as the folders are read
COLOURS = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40], [40, 200, 200]], np.float64)


def images_of(label: int, n: int, size=(16, 16), seed=0, gray=False) -> np.ndarray:
    rng = np.random.default_rng([seed, label])
    x = COLOURS[label] + rng.normal(0, 40, (n, *size, 3))
    x = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return x.mean(axis=-1, keepdims=True).astype(np.uint8) if gray else x


def write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tf.io.encode_png(image).numpy())


def make_folder(root: Path, per_class: dict[str, int], size=(16, 16), seed=0, gray=False) -> dict[str, np.ndarray]:
    """``root/<split>/<class>/<i>.png`` for each split; returns the images of each split in label order."""
    written = {}
    for split, n in per_class.items():
        chunks = []
        for label, name in enumerate(CLASSES):
            images = images_of(label, n, size, seed=seed + 10 * len(written), gray=gray)
            for i, image in enumerate(images):
                write_png(root / split / name / f"{i:03d}.png", image)
            chunks.append(images)
        written[split] = np.concatenate(chunks)
    return written


# ---------------------------------------------------------------------------------------------
# the loader


def test_train_and_val_folders(tmp_path):
    written = make_folder(tmp_path, {"train": 6, "val": 3})
    bundle = load_dataset("folder", data_dir=str(tmp_path), image_size=16, batch_size=8)
    assert "folder" in DATASETS
    assert bundle.class_names == CLASSES and bundle.num_classes == 5
    assert bundle.image_shape == (16, 16, 3) and (bundle.train_size, bundle.test_size) == (30, 15)
    # Files in sorted order, class by class: the arrays are the written pixels, labels the folder's index.
    assert np.array_equal(bundle.x_train, written["train"]) and np.array_equal(bundle.x_test, written["val"])
    assert np.array_equal(bundle.y_train, np.repeat(np.arange(5), 6))
    pixels = written["train"].astype(np.float64) / 255.0
    np.testing.assert_allclose(bundle.mean, pixels.mean(axis=(0, 1, 2)), rtol=1e-9)
    np.testing.assert_allclose(bundle.std, pixels.std(axis=(0, 1, 2)), rtol=1e-9)
    # The project's deterministic augmentation applies as to every in-memory dataset.
    a = [y.numpy() for _, y in bundle.train_stream(2).take(3)]
    b = [y.numpy() for _, y in load_dataset("folder", data_dir=str(tmp_path), batch_size=8,
                                            image_size=16).train_stream(2).take(3)]
    assert all(np.array_equal(p, q) for p, q in zip(a, b))


def test_test_folder_resizing_and_grayscale(tmp_path):
    make_folder(tmp_path, {"train": 2, "test": 1}, size=(20, 12), gray=True)
    bundle = load_dataset("folder", data_dir=str(tmp_path), image_size=8, batch_size=4)
    assert bundle.image_shape == (8, 8, 1) and bundle.test_size == 5  # all grayscale: one channel
    assert len(bundle.mean) == 1
    # One colour image among grayscale ones: every image becomes RGB.
    write_png(tmp_path / "test" / "cat" / "colour.png", images_of(0, 1, (20, 12))[0])
    bundle = load_dataset("folder", data_dir=str(tmp_path), image_size=8, batch_size=4)
    assert bundle.image_shape == (8, 8, 3) and bundle.test_size == 6
    gray = bundle.x_train[0]
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 0], gray[..., 2])


def test_default_image_size_is_32(tmp_path):
    make_folder(tmp_path, {"train": 1, "val": 1}, size=(10, 10))
    assert load_dataset("folder", data_dir=str(tmp_path)).image_shape == (32, 32, 3)


def test_single_folder_with_a_validation_split(tmp_path):
    make_folder(tmp_path / "data", {"all": 10})
    root = tmp_path / "data" / "all"
    bundle = load_dataset("folder", data_dir=str(root), validation_split=0.2, image_size=16, seed=0)
    assert (bundle.train_size, bundle.test_size) == (40, 10)
    assert np.array_equal(np.bincount(bundle.y_test), [2] * 5)  # stratified
    other_seed = load_dataset("folder", data_dir=str(root), validation_split=0.2, image_size=16, seed=5)
    assert np.array_equal(other_seed.x_test, bundle.x_test)  # the held-out images do not move with --seed
    train = {x.tobytes() for x in bundle.x_train}
    assert not train & {x.tobytes() for x in bundle.x_test}


def test_other_formats(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    make_folder(tmp_path, {"train": 2, "val": 1})
    for ext, mode in (("jpg", "RGB"), ("JPEG", "RGB"), ("bmp", "RGB"), ("gif", "P"), ("png", "RGBA")):
        image = Image.fromarray(images_of(1, 1, (16, 16))[0]).convert(mode)
        image.save(tmp_path / "train" / "dog" / f"extra.{ext}")
    (tmp_path / "train" / "dog" / "notes.txt").write_text("not an image: ignored")
    bundle = load_dataset("folder", data_dir=str(tmp_path), image_size=16)
    assert bundle.train_size == 15 and np.bincount(bundle.y_train).tolist() == [2, 7, 2, 2, 2]
    assert bundle.image_shape == (16, 16, 3)


@pytest.mark.parametrize(
    "setup, kwargs, needle",
    [
        (lambda p: None, {}, "has no train/ + val/ (or test/) folders; pass --validation_split"),
        (lambda p: (p / "train" / "cat" / "bad.png").write_bytes(b"\x89PNG not really"), {}, "bad.png"),
        (lambda p: (p / "val" / "yak").mkdir(), {}, "classes that the training folder lacks: yak"),
        (lambda p: (p / "train" / "yak").mkdir(), {}, "yak holds no"),
        (lambda p: None, {"validation_split": 0.2}, "drop --validation_split"),
        (lambda p: None, {"validation_split": 1.5}, "validation_split must be a fraction"),
    ],
)
def test_bad_folders_are_one_clear_line(tmp_path, setup, kwargs, needle):
    layout = {"train": 2} if "no train/ + val/" in needle else {"train": 2, "val": 1}
    make_folder(tmp_path, layout)
    if "no train/ + val/" in needle:
        os.rename(tmp_path / "train", tmp_path / "images")
    setup(tmp_path)
    with pytest.raises(DataError, match=re.escape(needle)) as e:
        load_dataset("folder", data_dir=str(tmp_path), image_size=8, **kwargs)
    assert "\n" not in str(e.value)


def test_missing_folder_and_split_on_other_datasets(tmp_path):
    with pytest.raises(DataError, match="needs --data_dir"):
        load_dataset("folder")
    with pytest.raises(DataError, match="is not a folder"):
        load_dataset("folder", data_dir=str(tmp_path / "nope"))
    with pytest.raises(DataError, match="validation_split applies to the folder dataset only"):
        load_dataset("synthetic", validation_split=0.1)


# ---------------------------------------------------------------------------------------------
# CLI: train 1 epoch, export, the exported files carry the folder's names and statistics


def test_cli_trains_and_exports_a_folder_with_its_names_and_statistics(tmp_path):
    written = make_folder(tmp_path / "data", {"train": 8, "val": 4})
    out = tmp_path / "run"
    env = child_env()
    proc = subprocess.run(
        [sys.executable, "-m", "ffsd_tf.run", "--dataset=folder", f"--data_dir={tmp_path / 'data'}",
         "--model=resnet8", "--image_size=16", "--batch_size=8", "--epochs=1", "--milestones=",
         f"--output_dir={out}", "--verbose=line", "--export"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # Stored: the names of the folders, NumPy's statistics of the training images.
    pixels = written["train"].astype(np.float64) / 255.0
    mean, std = pixels.mean(axis=(0, 1, 2)), pixels.std(axis=(0, 1, 2))
    meta = json.loads((out / "config.json").read_text())["dataset"]
    assert meta["class_names"] == CLASSES and meta["num_classes"] == 5
    np.testing.assert_allclose(meta["mean"], mean, rtol=1e-9)
    np.testing.assert_allclose(meta["std"], std, rtol=1e-9)
    version = out / "export" / "1"
    assert (version / "assets" / "class_names.txt").read_text().splitlines() == CLASSES

    # The SavedModel answers with the folder's names, in index order.
    loaded = tf.saved_model.load(str(version))
    result = loaded.signatures["serving_uint8"](images=tf.constant(written["val"]))
    classes, names = result["classes"].numpy(), result["class_names"].numpy()
    assert classes.shape == (20, 5)
    assert [[CLASSES[i] for i in row] for row in classes] == [[n.decode() for n in row] for row in names]

    # ... and normalises with those statistics: the Keras leader on (x / 255 - mean) / std.
    from ffsd_tf import rundir

    model, _, _ = rundir.restore_model(str(out))
    leader = model.deployable_leader()
    x = ((written["val"] / 255.0 - mean) / std).astype(np.float32)
    expected = tf.nn.softmax(leader(x, training=False)).numpy()
    np.testing.assert_allclose(result["probabilities"].numpy(), expected, atol=1e-5)

    # The TFLite fp32 file: the same probabilities, so the same class indices (names by index).
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(version / "tflite" / "leader_fp32.tflite"))
    inp, outp = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(inp["index"], [20, 16, 16, 3], strict=True)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], written["val"].astype(np.float32))
    interpreter.invoke()
    probs = interpreter.get_tensor(outp["index"])
    assert probs.shape == (20, 5)
    np.testing.assert_allclose(probs, expected, atol=1e-4)
    report = json.loads((version / "report.json").read_text())
    assert report["model"]["class_names"] == CLASSES
    np.testing.assert_allclose(report["model"]["mean"], mean, rtol=1e-6)


def test_cli_refuses_a_corrupt_image_with_one_line_naming_it(tmp_path):
    make_folder(tmp_path / "data", {"train": 2, "val": 1})
    bad = tmp_path / "data" / "val" / "dog" / "broken.png"
    bad.write_bytes(tf.io.encode_png(images_of(1, 1)[0]).numpy()[:40])  # truncated
    env = child_env()
    proc = subprocess.run(
        [sys.executable, "-m", "ffsd_tf.run", "--dataset=folder", f"--data_dir={tmp_path / 'data'}",
         "--model=resnet8", "--image_size=16", "--epochs=1", "--milestones=", f"--output_dir={tmp_path / 'run'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_export_reloads_a_split_folder_as_it_was_trained(tmp_path):
    """``python -m export`` re-reads the data from the run's config.json, --validation_split included."""
    from ffsd_tf import rundir
    from ffsd_tf.config import RunConfig
    from ffsd_tf.trainer import FFSDConfig

    make_folder(tmp_path / "data", {"all": 5})
    run = tmp_path / "run"
    run.mkdir()
    config = RunConfig(FFSDConfig(model="resnet8", num_classes=5, input_shape=(16, 16, 3))).replace(
        dataset="folder", data_dir=str(tmp_path / "data" / "all"), image_size=16, validation_split=0.4, seed=3)
    meta = {"name": "folder", "data_dir": config.data.data_dir, "num_classes": 5}
    rundir.write_json_atomic(str(run / rundir.CONFIG), {**config.to_dict(), "dataset": meta})
    bundle = rundir.load_run_data(str(run))
    assert bundle.class_names == CLASSES and (bundle.train_size, bundle.test_size) == (15, 10)
