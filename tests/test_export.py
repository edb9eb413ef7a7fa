"""Leader export: SavedModel signature, TFLite variants, size, bad inputs, atomicity, report, CLI.

One small FFSD cohort (ResNet-8, 16x16x3, 10 classes) is trained once on a learnable synthetic
task so that the leader's predictions vary across classes (quantisation agreement on a model that
always predicts one class would be meaningless); it is exported once with every format and the
tests read that export.
"""

import json
import os
import subprocess
import sys
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from ffsd_tf import export
from ffsd_tf.export import report as export_report
from ffsd_tf.export import serving, tflite
from ffsd_tf import rundir
from ffsd_tf.config import cohort_to_dict
from ffsd_tf.networks import build_network
from ffsd_tf.trainer import FFSD, FFSDConfig

from tests.conftest import ROOT, child_env

BIN = os.path.dirname(sys.executable)
IMAGE_SHAPE = (16, 16, 3)
K = 10
MEAN = (0.49, 0.47, 0.43)
STD = (0.25, 0.24, 0.26)
CLASS_NAMES = [f"class_{i}" for i in range(K - 1)] + ["t-shirt/top"]
CONFIG = FFSDConfig(model="resnet8", num_classes=K, input_shape=IMAGE_SHAPE)
N_EVAL = 600


def synthetic(n: int, seed: int):
    """Class templates (smooth colour blobs) plus strong pixel noise: learnable, not trivial."""
    templates = np.random.default_rng(1234).normal(size=(K, 4, 4, 3)).repeat(4, axis=1).repeat(4, axis=2)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, K, n)
    x = 128 + 15 * templates[labels] + rng.normal(0, 60, (n, *IMAGE_SHAPE))
    return np.clip(np.round(x), 0, 255).astype(np.uint8), labels.astype(np.int32)


def normalise(pixels):
    return ((np.asarray(pixels, np.float32) / 255.0 - np.float32(MEAN)) / np.float32(STD)).astype(np.float32)


def keras_probabilities(leader, pixels):
    return tf.nn.softmax(leader(tf.constant(normalise(pixels)), training=False)).numpy()


def as_run_dir(model: FFSD, path: str, config: FFSDConfig = CONFIG, meta_extra: dict | None = None) -> str:
    """A run directory as ``ffsd_tf.run`` writes it: config.json + checkpoints/ckpt-1."""
    os.makedirs(path, exist_ok=True)
    meta = {"name": "synthetic", "data_dir": None, "num_classes": K, "image_shape": list(IMAGE_SHAPE),
            "mean": list(MEAN), "std": list(STD), "class_names": CLASS_NAMES, **(meta_extra or {})}
    rundir.write_json_atomic(os.path.join(path, rundir.CONFIG),  # as runs before config.json held settings
                             {"model": cohort_to_dict(config), "dataset": meta})
    rundir.checkpoint_for(model).save(os.path.join(path, rundir.CHECKPOINTS, "ckpt"))  # as the trainer does
    return path


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)
    train_x, train_y = synthetic(1536, seed=1)
    eval_x, eval_y = synthetic(N_EVAL, seed=2)
    model = FFSD(CONFIG)
    model.compile({role: keras.optimizers.SGD(0.05, momentum=0.9) for role in model.active_roles})
    model.fit(normalise(train_x), train_y, batch_size=64, epochs=4, verbose=0, shuffle=True)
    leader = model.deployable_leader()
    return types.SimpleNamespace(model=model, leader=leader, train_x=train_x, eval_x=eval_x, eval_y=eval_y,
                                 reference=keras_probabilities(leader, eval_x))


def export_args(t, **kw):
    args = dict(mean=MEAN, std=STD, class_names=CLASS_NAMES, image_shape=IMAGE_SHAPE,
                representative_images=t.train_x[:200], eval_images=t.eval_x, eval_labels=t.eval_y, latency_repeats=3)
    args.update(kw)
    return args


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    export_dir = str(tmp_path_factory.mktemp("export"))
    report = export.export_leader(trained.leader, export_dir=export_dir, **export_args(trained))
    return types.SimpleNamespace(dir=export_dir, version_dir=report["path"], report=report)


# ------------------------------------------------------------------------------- the model
def test_leader_predictions_vary_across_classes(trained):
    predicted = np.argmax(trained.reference, -1)
    assert len(np.unique(predicted)) >= 8, np.bincount(predicted, minlength=K)
    assert 0.6 < np.mean(predicted == trained.eval_y) < 0.97  # chance is 0.1; not saturated either
    # Many borderline images, so that quantisation agreement measures something.
    assert np.mean(trained.reference.max(-1) < 0.9) > 0.2
    # The leader is a real deployable model: only the leader backbone's variables.
    assert len(trained.leader.weights) == len(trained.model.leader.weights)
    assert len(trained.leader.weights) < len(trained.model.weights) / 3


# ------------------------------------------------------------------------------- SavedModel
def test_savedmodel_layout_and_report_files(exported):
    assert os.path.basename(exported.version_dir) == "1"
    names = sorted(os.listdir(exported.version_dir))
    expected = {"saved_model.pb", "variables", "assets", "tflite", "report.json", "report.md", "leader.keras"}
    assert expected <= set(names), names
    assert sorted(os.listdir(os.path.join(exported.version_dir, "tflite"))) == [
        "leader_dynamic.tflite", "leader_fp16.tflite", "leader_fp32.tflite", "leader_int8.tflite"]
    assert [n for n in os.listdir(exported.dir)] == ["1"]  # no temporary directory left
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(exported.version_dir).st_mode & 0o777 == 0o777 & ~umask  # readable by TF Serving's user
    with open(os.path.join(exported.version_dir, "assets", "class_names.txt"), encoding="utf-8") as f:
        assert f.read().splitlines() == CLASS_NAMES


def test_savedmodel_matches_keras_from_raw_pixels(trained, exported):
    loaded = tf.saved_model.load(exported.version_dir)
    pixels = trained.eval_x[:256]
    ref = trained.reference[:256]
    out = loaded.signatures["serving_default"](images=tf.constant(pixels.astype(np.float32)))
    out8 = loaded.signatures["serving_uint8"](images=tf.constant(pixels))
    assert set(out) == {"probabilities", "classes", "scores", "class_names"}
    for o in (out, out8):
        probs = o["probabilities"].numpy()
        assert probs.dtype == np.float32 and probs.shape == (256, K)
        np.testing.assert_allclose(probs, ref, atol=1e-5, rtol=0)
        classes, scores, names = o["classes"].numpy(), o["scores"].numpy(), o["class_names"].numpy()
        assert classes.dtype == np.int32 and classes.shape == (256, 5)
        np.testing.assert_array_equal(classes[:, 0], np.argmax(ref, -1))
        np.testing.assert_allclose(scores, np.take_along_axis(probs, classes.astype(np.int64), -1), atol=1e-7)
        assert np.all(np.diff(scores, axis=-1) <= 0)
        decoded = [[n.decode() for n in row] for row in names]
        assert decoded == [[CLASS_NAMES[c] for c in row] for row in classes]
    # Variable batch size, batch of one included.
    one = loaded.signatures["serving_default"](images=tf.constant(pixels[:1].astype(np.float32)))
    np.testing.assert_allclose(one["probabilities"].numpy(), ref[:1], atol=1e-5)


def test_leader_keras_file_loads_and_predicts_as_the_savedmodel(trained, exported):
    """leader.keras: keras.models.load_model gives the leader, identical to the SavedModel on normalised input."""
    path = os.path.join(exported.version_dir, export.KERAS_FILE)
    leader = keras.models.load_model(path)
    assert isinstance(leader, keras.Model) and leader.count_params() == trained.leader.count_params()
    pixels = trained.eval_x[:64]
    probs = tf.nn.softmax(leader.predict(normalise(pixels), verbose=0)).numpy()
    loaded = tf.saved_model.load(exported.version_dir)
    served = loaded.signatures[serving.UINT8_SIGNATURE](images=tf.constant(pixels))["probabilities"].numpy()
    np.testing.assert_allclose(probs, served, atol=1e-5, rtol=0)
    np.testing.assert_allclose(probs, trained.reference[:64], atol=1e-5, rtol=0)
    row = exported.report["formats"]["keras"]
    assert row["path"] == "leader.keras" and row["size_bytes"] == os.path.getsize(path)
    assert row["max_abs_prob_diff"] < 1e-5 and row["top1_agreement"] == 1.0


def test_leader_keras_file_loads_in_plain_keras(trained, exported, tmp_path):
    """No ffsd_tf import (a fresh interpreter outside the repository): only Keras' own layers."""
    import subprocess
    import sys

    path = os.path.join(exported.version_dir, export.KERAS_FILE)
    code = ("import sys, keras; m = keras.models.load_model(sys.argv[1]); "
            "assert not any(n.startswith('ffsd_tf') for n in sys.modules); print(m.count_params())")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code, path], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split()[-1]) == trained.leader.count_params()


def test_saved_model_cli_shows_the_serving_signature(exported):
    proc = subprocess.run([os.path.join(BIN, "saved_model_cli"), "show", "--all", "--dir", exported.version_dir],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout
    block = text.split("signature_def['serving_default']:")[1].split("signature_def[")[0]
    assert "inputs['images'] tensor_info:\n        dtype: DT_FLOAT\n        shape: (-1, 16, 16, 3)" in block
    for name, dtype, shape in [("probabilities", "DT_FLOAT", "(-1, 10)"), ("classes", "DT_INT32", "(-1, 5)"),
                               ("scores", "DT_FLOAT", "(-1, 5)"), ("class_names", "DT_STRING", "(-1, 5)")]:
        assert f"outputs['{name}'] tensor_info:\n        dtype: {dtype}\n        shape: {shape}" in block, (name, block)
    assert "Method name is: tensorflow/serving/predict" in block
    uint8 = text.split("signature_def['serving_uint8']:")[1].split("signature_def[")[0]
    assert "inputs['images'] tensor_info:\n        dtype: DT_UINT8\n        shape: (-1, 16, 16, 3)" in uint8


@pytest.mark.parametrize("shape", [(16, 16, 3), (2, 20, 16, 3), (2, 8, 8, 3), (2, 16, 16, 1), (2, 16, 16, 4)],
                         ids=["rank3", "height", "size", "grey", "rgba"])
def test_savedmodel_rejects_wrong_shapes(exported, shape):
    loaded = tf.saved_model.load(exported.version_dir)
    # (Without the graph's EnsureShape op a rank-3 input aborts the process, a small image returns garbage.)
    expected = r"is not compatible with expected shape \[\?,16,16,3\]"
    with pytest.raises(tf.errors.InvalidArgumentError, match=expected):
        loaded.signatures["serving_default"](images=tf.zeros(shape, tf.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match=expected):
        loaded.signatures["serving_uint8"](images=tf.zeros(shape, tf.uint8))


def test_savedmodel_rejects_strings_and_other_dtypes(exported):
    loaded = tf.saved_model.load(exported.version_dir)
    with pytest.raises((ValueError, TypeError, tf.errors.InvalidArgumentError), match="float tensor but is a string"):
        loaded.signatures["serving_default"](images=tf.fill([1, 16, 16, 3], "x"))
    with pytest.raises((ValueError, TypeError, tf.errors.InvalidArgumentError), match="uint8 tensor but is a string"):
        loaded.signatures["serving_uint8"](images=tf.fill([1, 16, 16, 3], "x"))
    with pytest.raises((ValueError, TypeError, tf.errors.InvalidArgumentError), match="uint8 tensor but is a float"):
        loaded.signatures["serving_uint8"](images=tf.zeros([1, 16, 16, 3], tf.float32))


def test_graph_itself_rejects_wrong_shapes_when_fed_directly(exported):
    """TF Serving feeds the graph without the Python signature check: the EnsureShape op must fire."""
    graph = tf.Graph()
    with graph.as_default():
        anything = tf.compat.v1.placeholder(tf.float32, shape=None)
        sess = tf.compat.v1.Session(graph=graph)
        meta = tf.compat.v1.saved_model.loader.load(
            sess, ["serve"], exported.version_dir, input_map={"serving_default_images:0": anything})
        probs = graph.get_tensor_by_name(meta.signature_def["serving_default"].outputs["probabilities"].name)
        assert sess.run(probs, {anything: np.full((3, 16, 16, 3), 120, np.float32)}).shape == (3, K)
        for shape in [(2, 8, 8, 3), (2, 16, 16, 4), (16, 16, 3)]:  # without EnsureShape: garbage, then a crash
            with pytest.raises(tf.errors.InvalidArgumentError, match="not compatible with expected shape"):
                sess.run(probs, {anything: np.zeros(shape, np.float32)})
        sess.close()


# ------------------------------------------------------------------------------- TFLite
def litert(path):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path)
    interpreter.allocate_tensors()
    return interpreter


def test_tflite_fp32_matches_keras_on_the_litert_interpreter(trained, exported):
    interpreter = litert(os.path.join(exported.version_dir, "tflite", "leader_fp32.tflite"))
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    assert inp["dtype"] == np.float32 and list(inp["shape_signature"]) == [-1, 16, 16, 3]
    assert out["dtype"] == np.float32 and list(out["shape_signature"]) == [-1, K]
    batch = trained.eval_x[:64]
    interpreter.resize_tensor_input(inp["index"], [64, *IMAGE_SHAPE], strict=True)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], batch.astype(np.float32))  # raw pixels: normalisation is inside
    interpreter.invoke()
    np.testing.assert_allclose(interpreter.get_tensor(out["index"]), trained.reference[:64], atol=1e-4, rtol=0)


def test_tflite_quantised_variants_agree_with_keras(trained, exported):
    ref_top1 = np.argmax(trained.reference, -1)
    keras_acc = np.mean(ref_top1 == trained.eval_y)
    measured = {}
    for fmt, min_agreement in [("fp32", 1.0), ("fp16", 0.99), ("dynamic", 0.99), ("int8", 0.97)]:
        runner = tflite.TFLiteClassifier(os.path.join(exported.version_dir, "tflite", f"leader_{fmt}.tflite"))
        probs = runner.predict(trained.eval_x, batch_size=100)
        agreement = np.mean(np.argmax(probs, -1) == ref_top1)
        acc = np.mean(np.argmax(probs, -1) == trained.eval_y)
        measured[fmt] = (agreement, acc)
        assert agreement >= min_agreement, (fmt, agreement)
        if fmt == "int8":
            assert acc >= keras_acc - 0.01, (acc, keras_acc)
        # The report holds the same numbers.
        row = exported.report["formats"][fmt]
        assert row["top1_agreement"] == pytest.approx(agreement)
        assert row["accuracy"] == pytest.approx(acc)


def test_int8_file_takes_pixel_bytes_and_returns_uint8_probabilities(trained, exported):
    interpreter = litert(os.path.join(exported.version_dir, "tflite", "leader_int8.tflite"))
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    assert inp["dtype"] == np.uint8 and inp["quantization"] == (1.0, 0)  # q = pixel
    assert out["dtype"] == np.uint8 and out["quantization"][0] == pytest.approx(1 / 256) and out["quantization"][1] == 0
    interpreter.resize_tensor_input(inp["index"], [8, *IMAGE_SHAPE], strict=True)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], trained.eval_x[:8])
    interpreter.invoke()
    probs = interpreter.get_tensor(out["index"]).astype(np.float32) / 256
    assert np.all(np.abs(probs.sum(-1) - 1) < 0.05)
    assert exported.report["formats"]["int8"]["io"]["input"]["quantization"] == {"scale": 1.0, "zero_point": 0}


def test_int8_input_is_the_pixel_byte_even_for_dim_calibration_images(trained, tmp_path):
    """Calibration images spanning only 60..190 still give the identity input quantisation."""
    dim = np.clip(trained.train_x[:100], 60, 190).astype(np.uint8)
    report = export.export_leader(trained.leader, export_dir=str(tmp_path), formats=("int8",), **export_args(
        trained, representative_images=dim, eval_images=trained.eval_x[:200], eval_labels=trained.eval_y[:200]))
    assert report["formats"]["int8"]["io"]["input"]["quantization"] == {"scale": 1.0, "zero_point": 0}
    assert dim.min() == 60 and dim.max() == 190  # the caller's array is not modified


@pytest.mark.parametrize("fmt", ["fp32", "int8"])
def test_tflite_rejects_wrong_shapes(exported, fmt):
    interpreter = litert(os.path.join(exported.version_dir, "tflite", f"leader_{fmt}.tflite"))
    inp = interpreter.get_input_details()[0]
    dtype = inp["dtype"]
    for shape in [(1, 8, 8, 3), (1, 16, 16, 4), (16, 16, 3)]:
        with pytest.raises(ValueError):
            interpreter.set_tensor(inp["index"], np.zeros(shape, dtype))
    with pytest.raises((ValueError, RuntimeError)):
        interpreter.resize_tensor_input(inp["index"], [1, 8, 8, 3], strict=True)  # only the batch may change
    runner = tflite.TFLiteClassifier(os.path.join(exported.version_dir, "tflite", f"leader_{fmt}.tflite"))
    with pytest.raises(ValueError):
        runner.predict(np.zeros((2, 16, 16, 4), np.uint8))


# ------------------------------------------------------------------------------- size
def test_export_holds_the_leader_alone(trained, exported, tmp_path):
    """Same variables and no larger than one standalone ResNet-8 exported the same way."""
    net = build_network("resnet8", num_classes=K, input_shape=IMAGE_SHAPE)
    standalone = keras.Model(net.input, net.output["logits"], name="standalone")
    report = export.export_leader(standalone, export_dir=str(tmp_path), formats=("savedmodel", "fp32"),
                                  **export_args(trained, eval_images=trained.eval_x[:32],
                                                eval_labels=trained.eval_y[:32]))
    mine = serving.variable_stats(exported.version_dir)
    alone = serving.variable_stats(report["path"])
    assert mine["count"] == alone["count"] == len(standalone.weights)
    assert mine["scalars"] == alone["scalars"] == standalone.count_params()
    assert mine["bytes"] <= alone["bytes"] * 1.01 + 1024
    fp32 = os.path.getsize(os.path.join(exported.version_dir, "tflite", "leader_fp32.tflite"))
    assert fp32 <= os.path.getsize(os.path.join(report["path"], "tflite", "leader_fp32.tflite")) * 1.01 + 1024
    # The whole cohort is several times larger: the check above would catch a leak.
    cohort_scalars = sum(int(np.prod(v.shape)) for v in trained.model.weights)
    assert cohort_scalars > 3 * mine["scalars"]
    assert exported.report["model"]["parameters"] == standalone.count_params()
    assert exported.report["formats"]["savedmodel"]["variables"] == mine


# ------------------------------------------------------------------------------- report
def test_report_has_every_number(exported):
    with open(os.path.join(exported.version_dir, "report.json")) as f:
        report = json.load(f)
    assert report["version"] == 1 and report["model"]["parameters"] > 0
    assert report["evaluation"]["images"] == N_EVAL and report["representative"]["images"] == 200
    assert set(report["formats"]) == {"keras", "savedmodel", "fp32", "fp16", "dynamic", "int8"}
    for name, row in report["formats"].items():
        assert 0 < row["accuracy"] <= 1
        assert row["latency_ms"]["batch1"] > 0 and row["latency_ms"]["batch32"] > 0
        if name != "keras":
            assert row["size_bytes"] == (
                os.path.getsize(os.path.join(exported.version_dir, row["path"])) if name != "savedmodel"
                else row["size_bytes"])
            assert 0 <= row["max_abs_prob_diff"] < 1 and 0.9 <= row["top1_agreement"] <= 1
    assert report["formats"]["savedmodel"]["max_abs_prob_diff"] < 1e-5
    assert report["formats"]["fp32"]["max_abs_prob_diff"] < 1e-4
    sizes = {f: report["formats"][f]["size_bytes"] for f in ("fp32", "fp16", "dynamic", "int8")}
    assert sizes["fp16"] < 0.6 * sizes["fp32"]
    assert sizes["dynamic"] < 0.4 * sizes["fp32"] and sizes["int8"] < 0.4 * sizes["fp32"]
    with open(os.path.join(exported.version_dir, "report.md")) as f:
        md = f.read()
    assert "| int8 | `tflite/leader_int8.tflite` |" in md and "scale 1, zero point 0" in md
    assert md == export_report.markdown(report)


# ------------------------------------------------------------------------------- atomicity
def test_interrupted_export_leaves_nothing(trained, tmp_path, monkeypatch):
    real = tflite.convert

    def convert_then_fail(concrete, trackable, fmt, representative=None):
        if fmt == "int8":
            raise RuntimeError("converter crashed")
        return real(concrete, trackable, fmt, representative)

    monkeypatch.setattr(tflite, "convert", convert_then_fail)
    existing = tmp_path / "export"
    with pytest.raises(RuntimeError, match="converter crashed"):
        export.export_leader(trained.leader, export_dir=str(existing), **export_args(
            trained, eval_images=trained.eval_x[:32], eval_labels=trained.eval_y[:32]))
    assert not existing.exists()  # it did not exist before: nothing at all is left
    existing.mkdir()
    (existing / "README").write_text("mine")
    with pytest.raises(RuntimeError, match="converter crashed"):
        export.export_leader(trained.leader, export_dir=str(existing), **export_args(
            trained, eval_images=trained.eval_x[:32], eval_labels=trained.eval_y[:32]))
    assert sorted(os.listdir(existing)) == ["README"]  # no version, no .tmp-*


def test_temp_folders_of_killed_exports_are_removed_and_others_kept(tmp_path):
    import socket

    host = socket.gethostname()
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()  # its pid now belongs to no process
    names = {
        "dead": f".tmp-1-{finished.pid}@{host}-0a1b2c3d",
        "alive": f".tmp-1-{os.getpid()}@{host}-0a1b2c3d",  # an export in progress here
        "other_host": f".tmp-1-{finished.pid}@not-{host}-0a1b2c3d",  # a shared folder: not ours to judge
        "unknown": ".tmp-1-0a1b2c3d",  # no owner in the name
        "version": "1",
    }
    for name in names.values():
        (tmp_path / name).mkdir()
        (tmp_path / name / "saved_model.pb").write_bytes(b"x")
    assert export.remove_stale_temp_dirs(str(tmp_path)) == [names["dead"]]
    assert sorted(os.listdir(tmp_path)) == sorted(n for k, n in names.items() if k != "dead")


def test_existing_version_is_never_overwritten(trained, tmp_path):
    d = str(tmp_path)
    small = export_args(trained, eval_images=trained.eval_x[:16], eval_labels=trained.eval_y[:16])
    first = export.export_leader(trained.leader, export_dir=d, formats=("fp32",), version=3, **small)
    assert first["path"] == os.path.join(d, "3")
    before = {f: os.path.getmtime(os.path.join(d, "3", f)) for f in ("report.json", "tflite/leader_fp32.tflite")}
    with pytest.raises(export.ExportError, match="version 3 already exists"):
        export.export_leader(trained.leader, export_dir=d, formats=("fp32",), version=3, **small)
    assert before == {f: os.path.getmtime(os.path.join(d, "3", f)) for f in before}
    assert sorted(os.listdir(d)) == ["3"]
    nxt = export.export_leader(trained.leader, export_dir=d, formats=("fp32",), **small)
    assert nxt["version"] == 4 and sorted(os.listdir(d)) == ["3", "4"]
    # An empty directory with a version's name is not replaced either.
    os.mkdir(os.path.join(d, "7"))
    with pytest.raises(export.ExportError, match="already exists"):
        export.export_leader(trained.leader, export_dir=d, formats=("fp32",), version=7, **small)
    assert os.listdir(os.path.join(d, "7")) == []


def test_bad_arguments_fail_before_writing(trained, tmp_path):
    d = tmp_path / "x"
    cases = [
        dict(formats=("onnx",)),
        dict(class_names=CLASS_NAMES[:-1]),
        dict(image_shape=(32, 32, 3)),
        dict(representative_images=trained.train_x[:4].astype(np.float32)),
        dict(eval_labels=trained.eval_y[:3]),
        dict(std=(0.2, 0.0, 0.2)),
        dict(eval_labels=np.full(N_EVAL, K)),
    ]
    for case in cases:
        with pytest.raises(export.ExportError):
            export.export_leader(trained.leader, export_dir=str(d), **export_args(trained, **case))
        assert not d.exists()


# ------------------------------------------------------------------------------- export_run
def test_export_run_restores_the_leader_and_samples_the_data(trained, tmp_path, monkeypatch):
    """export_run on a run directory: restore, data via load_dataset, default <run>/export."""
    run = as_run_dir(trained.model, str(tmp_path / "run"))
    calls = []

    class Bundle:
        image_shape = IMAGE_SHAPE
        num_classes = K
        mean, std, class_names = MEAN, STD, CLASS_NAMES

        def raw(self, split):
            x, y = (trained.train_x, None) if split == "train" else (trained.eval_x, trained.eval_y)
            y = np.zeros(len(x), np.int32) if y is None else y
            return tf.data.Dataset.from_tensor_slices((x, y))

    def load_dataset(name, data_dir=None, batch_size=128, seed=0, image_size=None, synthetic_classes=10,
                     synthetic_train=512, synthetic_test=256):
        calls.append(dict(name=name, data_dir=data_dir, synthetic_classes=synthetic_classes))
        return Bundle()

    from ffsd_tf.data import DataError

    monkeypatch.setitem(sys.modules, "ffsd_tf.data", types.SimpleNamespace(load_dataset=load_dataset, DataError=DataError))
    report = export.export_run(run, max_eval=300, max_representative=50, formats=("savedmodel", "int8"),
                               latency_repeats=1)
    assert calls and calls[0]["name"] == "synthetic" and calls[0]["synthetic_classes"] == K
    assert report["path"] == os.path.join(run, "export", "1")
    assert report["source"].endswith("ckpt-1")
    assert report["evaluation"]["images"] == 300 and report["representative"]["images"] == 50
    loaded = tf.saved_model.load(report["path"])
    got = loaded.signatures["serving_uint8"](images=tf.constant(trained.eval_x[:32]))["probabilities"].numpy()
    np.testing.assert_allclose(got, trained.reference[:32], atol=1e-5)  # the restored leader is the trained one
    assert report["formats"]["int8"]["top1_agreement"] >= 0.97
    # A checkpoint prefix works too, and goes to the next version.
    again = export.export_run(os.path.join(run, "checkpoints", "ckpt-1"), max_eval=50, max_representative=10,
                              formats=("fp32",), latency_repeats=1)
    assert again["version"] == 2


def synthetic_run(model: FFSD, path: str) -> tuple[str, object]:
    """A run directory on the real ``synthetic`` dataset (16x16, 64 train / 300 test images, seed 3)."""
    from ffsd_tf.data import load_dataset

    bundle = load_dataset("synthetic", seed=3, image_size=16, synthetic_classes=K, synthetic_train=64,
                          synthetic_test=300)
    meta = {"mean": list(bundle.mean), "std": list(bundle.std), "class_names": list(bundle.class_names)}
    as_run_dir(model, path, meta_extra=meta)
    with open(os.path.join(path, rundir.FLAGS_FILE), "w") as f:
        f.write("# Effective flags\n--dataset=synthetic\n--image_size=16\n--seed=3\n--synthetic_classes=10\n"
                "--synthetic_test=300\n--synthetic_train=64\n")
    return path, bundle


def test_export_run_loads_the_runs_own_data(trained, tmp_path):
    """Image size, synthetic sizes and seed come from the flags.txt of a run written before config.json
    held its settings; mean/std from config.json."""
    run, bundle = synthetic_run(trained.model, str(tmp_path / "run"))
    report = export.export_run(run, formats=("fp32",), max_eval=1000, latency_repeats=1)
    assert report["evaluation"]["images"] == 300  # the whole test split (fewer than max_eval)
    assert report["representative"]["images"] == 64  # synthetic_train=64 from flags.txt
    assert report["model"]["mean"] == pytest.approx(list(bundle.mean))
    leader = trained.leader
    x = ((bundle.x_test / 255.0 - np.float32(bundle.mean)) / np.float32(bundle.std)).astype(np.float32)
    acc = np.mean(np.argmax(leader(x, training=False), -1) == bundle.y_test)
    assert report["formats"]["keras"]["accuracy"] == pytest.approx(acc)
    assert report["formats"]["fp32"]["max_abs_prob_diff"] < 1e-4


# ------------------------------------------------------------------------------- CLI
def run_export_cli(*args, timeout=180):
    env = child_env()
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the CLI must keep TensorFlow's start-up noise off stderr itself
    return subprocess.run([sys.executable, "-m", "export", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def assert_one_line_error(proc, needle):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_cli_refuses_bad_input_with_one_line(trained, tmp_path):
    missing = tmp_path / "nope"
    export_dir = tmp_path / "exports"
    assert_one_line_error(run_export_cli(str(missing), f"--export_dir={export_dir}"), "does not exist")
    not_a_run = tmp_path / "plain"
    not_a_run.mkdir()
    assert_one_line_error(run_export_cli(str(not_a_run), f"--export_dir={export_dir}"), "not a run directory")
    assert not export_dir.exists()

    # A checkpoint that does not match the run's config (another architecture).
    other = FFSD(FFSDConfig(model="resnet8", num_classes=K, input_shape=IMAGE_SHAPE, num_students=1, fusion=False,
                            self_distillation="none"))
    other(tf.zeros((1, *IMAGE_SHAPE)))
    wrong = as_run_dir(other, str(tmp_path / "wrong"))
    with open(os.path.join(wrong, rundir.CONFIG)) as f:
        cfg = json.load(f)
    cfg["model"]["model"] = "resnet20"
    rundir.write_json_atomic(os.path.join(wrong, rundir.CONFIG), cfg)
    assert_one_line_error(run_export_cli(wrong, f"--export_dir={export_dir}"), "does not match")
    assert not export_dir.exists()

    # An existing version of a real run, and an unknown format.
    run = as_run_dir(trained.model, str(tmp_path / "run"))
    (export_dir / "1").mkdir(parents=True)
    (export_dir / "1" / "saved_model.pb").write_bytes(b"old")
    assert_one_line_error(run_export_cli(run, f"--export_dir={export_dir}", "--version=1"), "already exists")
    assert_one_line_error(run_export_cli(run, f"--export_dir={export_dir}", "--formats=fp32,onnx"), "onnx")
    assert sorted(os.listdir(export_dir)) == ["1"] and (export_dir / "1" / "saved_model.pb").read_bytes() == b"old"


def test_cli_exports_a_run(trained, tmp_path):
    run, _ = synthetic_run(trained.model, str(tmp_path / "run"))
    proc = run_export_cli(run, "--formats=savedmodel,int8", "--max_eval=100", "--max_representative=32",
                          "--latency_repeats=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    version_dir = os.path.join(run, "export", "1")
    assert f"Exported version 1 to {version_dir}" in proc.stdout and "| int8 |" in proc.stdout
    assert sorted(os.listdir(os.path.join(run, "export"))) == ["1"]
    with open(os.path.join(version_dir, "report.json")) as f:
        report = json.load(f)
    assert set(report["formats"]) == {"keras", "savedmodel", "int8"} and report["source"].endswith("ckpt-1")
    assert os.path.exists(os.path.join(version_dir, "tflite", "leader_int8.tflite"))


def test_cli_exports_a_real_training_run(tmp_path):
    """``python -m ffsd_tf.run`` then ``python -m export``: the export measures what training measured."""
    out = str(tmp_path / "run")
    env = child_env()
    train = subprocess.run(
        [sys.executable, "-m", "ffsd_tf.run", "--dataset=synthetic", "--model=resnet8", "--image_size=16",
         "--epochs=2", "--batch_size=32", "--milestones=", f"--output_dir={out}", "--verbose=line"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr[-3000:]
    proc = run_export_cli(out, "--latency_repeats=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(out, "export", "1", "report.json")) as f:
        report = json.load(f)
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    # The whole synthetic test split (256 images), the same leader: the same accuracy as training's last eval.
    assert report["evaluation"]["images"] == 256 and report["source"].endswith("ckpt-2")
    assert report["formats"]["keras"]["accuracy"] == pytest.approx(results["accuracy"]["leader"]["final"], abs=1e-6)
    assert report["formats"]["savedmodel"]["max_abs_prob_diff"] < 1e-5
    assert report["formats"]["fp32"]["max_abs_prob_diff"] < 1e-4
    assert report["formats"]["int8"]["io"]["input"]["quantization"] == {"scale": 1.0, "zero_point": 0}
