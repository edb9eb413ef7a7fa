"""The SavedModel's ``serving_bytes`` signature: encoded image files in, the training resize and
channel rules (``ffsd_tf.data.images``) in the graph, the same outputs as ``serving_default``."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from ffsd_tf.data import images
from ffsd_tf.export import serving
from tests.conftest import child_env
from tests.test_export import exported, trained  # noqa: F401  (module fixtures: a trained leader, its export)


def files(rng, n, size=(37, 23)):
    """n PNG files (lossless) of random photos at another size than the model's."""
    pixels = rng.integers(0, 256, (n, *size, 3), dtype=np.uint8)
    return [tf.io.encode_png(p).numpy() for p in pixels]


def load(exported):  # noqa: F811
    loaded = tf.saved_model.load(exported.version_dir)
    return loaded, loaded.signatures


def test_png_files_give_serving_defaults_outputs_on_the_training_resize(exported):  # noqa: F811
    loaded, sig = load(exported)
    data = files(np.random.default_rng(0), 6)
    resized = np.stack([images.load_image(d, 16, 3).numpy() for d in data])  # what training on a folder sees
    from_files = sig[serving.BYTES_SIGNATURE](images=tf.constant(data))
    from_pixels = sig[serving.DEFAULT_SIGNATURE](images=tf.constant(resized.astype(np.float32)))
    for key in serving.OUTPUT_NAMES:
        a, b = from_files[key].numpy(), from_pixels[key].numpy()
        assert a.dtype == b.dtype and a.shape == b.shape, key
        if a.dtype == np.float32:
            np.testing.assert_allclose(a, b, atol=1e-6, err_msg=key)
        else:
            assert (a == b).all(), key


def test_other_formats_channels_and_sizes_go_through(exported):  # noqa: F811
    loaded, sig = load(exported)
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (9, 11, 1), dtype=np.uint8)
    rgba = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)
    data = [tf.io.encode_jpeg(rgb).numpy(), tf.io.encode_png(gray).numpy(), tf.io.encode_png(rgba).numpy(),
            tf.io.encode_jpeg(gray).numpy()]
    out = sig[serving.BYTES_SIGNATURE](images=tf.constant(data))
    assert out["probabilities"].shape == (4, 10)
    # Gray is repeated to RGB and alpha dropped, as in training: the same prediction as those pixels.
    same = sig[serving.UINT8_SIGNATURE](images=tf.constant(np.stack(
        [np.repeat(images.decode_resize(data[1], 16).numpy(), 3, axis=-1), images.decode_resize(data[2], 16).numpy()])))
    np.testing.assert_allclose(out["probabilities"].numpy()[1:3], same["probabilities"].numpy(), atol=1e-6)


def test_accuracy_over_the_files_equals_the_evaluation_of_their_resized_images(trained, exported):  # noqa: F811
    """A held-out set sent as the original files scores what the run's evaluation of the same images,
    resized as training resizes them, scores (within 0.1 points; here exactly)."""
    loaded, sig = load(exported)
    big = tf.image.resize(trained.eval_x[:200].astype(np.float32), [48, 48], method="nearest").numpy().astype(np.uint8)
    data = [tf.io.encode_png(p).numpy() for p in big]
    labels = trained.eval_y[:200]
    served = sig[serving.BYTES_SIGNATURE](images=tf.constant(data))["classes"].numpy()[:, 0]
    resized = np.stack([images.load_image(d, 16, 3).numpy() for d in data])
    evaluated = np.argmax(tf.nn.softmax(trained.leader(
        tf.constant(((resized / 255.0 - np.float32((0.49, 0.47, 0.43))) / np.float32((0.25, 0.24, 0.26))).astype(np.float32)),
        training=False)).numpy(), axis=-1)
    served_acc, eval_acc = 100 * np.mean(served == labels), 100 * np.mean(evaluated == labels)
    assert abs(served_acc - eval_acc) <= 0.1 and served_acc > 20  # a trained leader, not chance (10 %)


def test_bad_strings_fail_the_request_not_the_process(exported, tmp_path):  # noqa: F811
    """In a fresh interpreter: garbage, empty, truncated and oversized-header strings each raise for their
    request; the same loaded signature then still serves a good file, and the process exits 0."""
    script = textwrap.dedent(f"""
        import struct, sys, zlib
        import numpy as np, tensorflow as tf
        sig = tf.saved_model.load({exported.version_dir!r}).signatures["serving_bytes"]
        ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
        huge = b"\\x89PNG\\r\\n\\x1a\\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
        good = tf.io.encode_png(np.zeros((20, 20, 3), np.uint8)).numpy()
        refused = 0
        for bad in [b"not an image", b"", good[:30], huge, b"\\xff\\xd8garbage"]:
            try:
                sig(images=tf.constant([good, bad]))
            except tf.errors.InvalidArgumentError as e:
                refused += 1
                if bad is huge:
                    assert "over the limit" in str(e), str(e)[:300]
        out = sig(images=tf.constant([good]))
        print(refused, out["probabilities"].shape)
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=child_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[0] == "5" and "(1, 10)" in proc.stdout


def test_export_report_lists_the_signature(exported):  # noqa: F811
    sigs = exported.report["formats"]["savedmodel"]["signatures"]
    assert sigs[serving.BYTES_SIGNATURE]["input"] == {"name": "images", "dtype": "string", "shape": [-1]}
    assert set(sigs) == {serving.DEFAULT_SIGNATURE, serving.UINT8_SIGNATURE, serving.BYTES_SIGNATURE}
