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


# ---------------------------------------------------------------------------------------------
# the prepared cache: streamed batches equal the in-memory ones; reuse, change and damage


def _reference(paths, size, channels):
    """The images decoded one by one by the rules of ``images`` (the in-memory path of before)."""
    from ffsd_tf.data import images

    return np.stack([images.to_channels(images.decode_resize(tf.io.read_file(str(p)), size), channels).numpy()
                     for p in paths])


def _in_memory(bundle, x_train, x_test):
    import dataclasses

    from ffsd_tf.data import DataBundle

    fields = {f.name: getattr(bundle, f.name) for f in dataclasses.fields(DataBundle)}
    return DataBundle(**{**fields, "x_train": x_train, "x_test": x_test})


def _batches(ds, n):
    return [(x.numpy(), y.numpy()) for x, y in ds.take(n)]


def _assert_same(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(xa, xb)


@pytest.mark.parametrize("gray", [False, True])
def test_streaming_from_the_cache_equals_the_in_memory_pipeline(tmp_path, gray):
    from ffsd_tf.data.base import channel_stats

    make_folder(tmp_path, {"train": 7, "val": 3}, size=(20, 12), gray=gray)
    bundle = load_dataset("folder", data_dir=str(tmp_path), image_size=8, batch_size=8, partial_batch="keep",
                          eval_batch_size=4, seed=3)
    assert not isinstance(bundle.x_train, np.ndarray)  # streamed: the training split is not in memory
    channels = 1 if gray else 3
    order = lambda split: sorted((tmp_path / split).rglob("*.png"))  # noqa: E731  (class, then file)
    x_train, x_test = _reference(order("train"), 8, channels), _reference(order("val"), 8, channels)
    assert bundle.image_shape == (8, 8, channels)
    assert (x_train.std(), x_test.std()) != (0, 0)
    memory = _in_memory(bundle, x_train, x_test)
    assert type(memory).__name__ == "DataBundle"
    np.testing.assert_allclose(bundle.mean, channel_stats(x_train)[0], rtol=1e-12)
    np.testing.assert_allclose(bundle.std, channel_stats(x_train)[1], rtol=1e-12)
    steps = bundle.steps_per_epoch
    assert steps == 5  # 35 images, batch 8, the partial batch kept
    _assert_same(_batches(bundle.train_stream(0), 2 * steps), _batches(memory.train_stream(0), 2 * steps))
    _assert_same(_batches(bundle.train_stream(1), steps), _batches(memory.train_stream(0).skip(steps), steps))
    _assert_same(_batches(bundle.test_dataset(), 99), _batches(memory.test_dataset(), 99))
    raw = [(x[None], y[None]) for x, y in bundle.raw("test").as_numpy_iterator()]
    _assert_same(raw, [(x[None], y[None]) for x, y in memory.raw("test").as_numpy_iterator()])
    np.testing.assert_array_equal(bundle.x_train[[4, 0, 4]], x_train[[4, 0, 4]])
    # A subset is a view of the cache with the in-memory subset's rows.
    sub = load_dataset("folder", data_dir=str(tmp_path), image_size=8, batch_size=8, train_subset=10, seed=3)
    ref = load_dataset("folder", data_dir=str(tmp_path), image_size=8, batch_size=8, seed=3)
    from ffsd_tf.data.pipeline import balanced_subset

    keep = balanced_subset(ref.y_train, 10, 3, 1)
    memory = _in_memory(sub, x_train[keep], x_test)
    _assert_same(_batches(sub.train_stream(2), 2), _batches(memory.train_stream(2), 2))


def _entry(root: Path) -> Path:
    (entry,) = [p for p in (root / ".ffsd-cache").iterdir() if p.is_dir()]
    return entry


def test_the_cache_is_reused_and_a_changed_folder_prepared_again(tmp_path, capfd):
    make_folder(tmp_path, {"train": 3, "val": 1})
    load = lambda **kw: load_dataset("folder", data_dir=str(tmp_path), image_size=8, **kw)  # noqa: E731
    load()
    first = capfd.readouterr().err
    assert first.count("\n") == 1 and "folder: preparing" in first and "images/s" in first  # no terminal: 1 line
    index = _entry(tmp_path) / "index.json"
    stamp = index.stat().st_mtime_ns
    load()
    assert capfd.readouterr().err == "" and index.stat().st_mtime_ns == stamp  # from the cache, not decoded
    write_png(tmp_path / "train" / "cat" / "000.png", images_of(3, 1)[0])  # modified
    (tmp_path / "train" / "dog" / "001.png").unlink()  # removed
    write_png(tmp_path / "val" / "eel" / "new.png", images_of(2, 1)[0])  # added
    bundle = load()
    err = capfd.readouterr().err
    assert "changed since its cache was prepared" in err
    assert "train: 1 removed (train/dog/001.png)" in err and "train: 1 modified (train/cat/000.png)" in err
    assert "test: 1 added (val/eel/new.png)" in err
    assert (bundle.train_size, bundle.test_size) == (14, 6)
    # Another image size is its own entry; the first one stays.
    load_dataset("folder", data_dir=str(tmp_path), image_size=16)
    assert len([p for p in (tmp_path / ".ffsd-cache").iterdir() if p.is_dir()]) == 2


@pytest.mark.parametrize("damage, needle", [
    (lambda e: (e / "train-00000.npy").write_bytes((e / "train-00000.npy").read_bytes()[:-5]), "truncated"),
    (lambda e: (e / "index.json").write_text("{not json"), "index.json is unreadable"),
    (lambda e: (e / "test-00000.npy").unlink(), "test-00000.npy is missing"),
    (lambda e: (e / "index.json").write_text(
        (e / "index.json").read_text().replace('"image_size": 8', '"image_size": 9')), "does not match its key"),
])
def test_a_damaged_cache_is_one_line_and_rebuilt_on_request(tmp_path, damage, needle):
    make_folder(tmp_path, {"train": 2, "val": 1})
    load_dataset("folder", data_dir=str(tmp_path), image_size=8)
    entry = _entry(tmp_path)
    damage(entry)
    (tmp_path / ".ffsd-cache" / (entry.name + ".tmp-999999")).mkdir()  # left by a killed preparation
    with pytest.raises(DataError, match="--rebuild_cache") as e:
        load_dataset("folder", data_dir=str(tmp_path), image_size=8)
    message = str(e.value)
    assert "\n" not in message and "damaged" in message and str(entry) in message
    assert needle in message, message
    bundle = load_dataset("folder", data_dir=str(tmp_path), image_size=8, rebuild_cache=True)
    assert bundle.train_size == 10 and len(list(tmp_path.rglob("*.png"))) == 15  # the images are untouched
    assert sorted(p.name for p in (tmp_path / ".ffsd-cache").iterdir()) == sorted([entry.name, entry.name + ".lock"])


def test_cache_dir_is_where_the_cache_goes_and_folder_only(tmp_path):
    make_folder(tmp_path / "data", {"train": 2, "val": 1})
    load_dataset("folder", data_dir=str(tmp_path / "data"), image_size=8, cache_dir=str(tmp_path / "c"))
    assert not (tmp_path / "data" / ".ffsd-cache").exists()
    assert any((tmp_path / "c").glob("8px-val-*/index.json"))
    with pytest.raises(DataError, match="folder dataset only"):
        load_dataset("synthetic", cache_dir=str(tmp_path / "c"))


def test_the_data_modules_import_no_circle():
    """No module of ffsd_tf/data imports (at the top or inside a function) one that imports it back."""
    import ast

    folder = Path(ROOT) / "ffsd_tf" / "data"
    graph = {}
    for path in folder.glob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ffsd_tf.data"):
                names.add(node.module.split(".")[2] if node.module.count(".") >= 2 else None)
                if node.module == "ffsd_tf.data":
                    names.update(a.name for a in node.names)
            elif isinstance(node, ast.Import):
                names.update(a.name.split(".")[2] for a in node.names if a.name.startswith("ffsd_tf.data."))
        graph[path.stem] = {n for n in names if n and n != path.stem and (folder / f"{n}.py").exists()}

    def reaches(start, goal, seen=()):
        return any(n == goal or (n not in seen and reaches(n, goal, (*seen, n))) for n in graph.get(start, ()))

    circles = [m for m in graph if m != "__init__" and reaches(m, m)]
    assert not circles, {m: graph[m] for m in circles}
