"""`python -m ffsd_tf.visualize`: attention and curve PNGs, the attention grid, the TensorBoard callback, bad input.

One real FFSD run (ResNet-8 on a small synthetic task, 2 epochs) is trained once.
"""

import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from ffsd_tf import rundir, visualize
from ffsd_tf.trainer import FFSD, FFSDConfig

from tests.conftest import SYNTHETIC, run_cli, run_module

SMALL = [*SYNTHETIC, "--milestones=", "--epochs=2", "--verbose=quiet", "--seed=3"]


def cli(*args, timeout=300):
    return run_module("ffsd_tf.visualize", args, timeout=timeout)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("visualize") / "run")
    proc = run_cli([*SMALL, f"--output_dir={out}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def read_png(path):
    data = open(path, "rb").read()
    assert len(data) > 1000
    return tf.io.decode_png(data, channels=3).numpy()


def coloured_pixels(image):
    """Pixels with a clearly saturated colour (matplotlib's line colours; text and axes are grey)."""
    image = image.astype(np.int32)
    return int(np.sum(image.max(-1) - image.min(-1) > 80))


def test_cli_writes_attention_and_curves_pngs(run_dir):
    proc = cli(run_dir, "--images=3")
    assert proc.returncode == 0, proc.stderr
    figures = os.path.join(run_dir, "figures")  # the default --output_dir
    attention = read_png(os.path.join(figures, "attention.png"))
    curves = read_png(os.path.join(figures, "curves.png"))
    # 3 rows of 64-pixel panels; 1 image column + 3 networks x 3 stages (ResNet-8: M = 3).
    assert attention.shape[0] > 3 * 64 and attention.shape[1] > 10 * 64 and attention.shape[2] == 3
    assert coloured_pixels(attention) > 9 * 3 * 64 * 64 // 2  # the jet-coloured maps
    assert curves.shape[0] >= 400 and curves.shape[1] >= 600
    # Non-trivial: every one of the four panels (train acc, test acc, losses, loss terms) has curves,
    # coloured lines, not only axes and text.
    h, w = curves.shape[0] // 2, curves.shape[1] // 2
    for quadrant in (curves[:h, :w], curves[:h, w:], curves[h:, :w], curves[h:, w:]):
        assert coloured_pixels(quadrant) > 800
    assert len(np.unique(curves.reshape(-1, 3), axis=0)) > 50


def test_students_attention_panels_differ_in_the_png(run_dir, tmp_path):
    out = visualize.visualize_run(run_dir, images=4, output_dir=str(tmp_path / "figs"))
    png = read_png(out["attention"])
    layout = out["layout"]
    assert layout.networks == ("student1", "student2", "leader") and layout.num_stages == 3
    # The grid is drawn one to one: the PNG holds it pixel for pixel where the boxes say.
    y0, _, x0, _ = out["boxes"][(0, None, None)]
    np.testing.assert_array_equal(png[y0:y0 + layout.height, x0:x0 + layout.width], out["grid"])
    for row in range(4):
        y0, y1, x0, x1 = out["boxes"][(row, None, None)]
        image_panel = png[y0:y1, x0:x1]
        assert image_panel.shape == (64, 64, 3)
        for m in range(3):
            panels = {}
            for net in layout.networks:
                y0, y1, x0, x1 = out["boxes"][(row, net, m)]
                panels[net] = png[y0:y1, x0:x1].astype(np.int32)
                assert panels[net].shape == (64, 64, 3)
                assert panels[net].std() > 1  # a map, not a blank panel
                assert coloured_pixels(panels[net]) > 64 * 64 // 2  # jet colours fill the panel
            # Different networks attend differently: the students' panels (and the leader's) differ.
            assert np.abs(panels["student1"] - panels["student2"]).mean() > 2, (row, m)
            assert np.abs(panels["student1"] - panels["leader"]).mean() > 2, (row, m)


def test_grid_follows_the_networks(run_dir):
    model, meta, _ = rundir.restore_model(run_dir)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    images = ((pixels / 255.0 - np.float32(meta["mean"])) / np.float32(meta["std"])).astype(np.float32)
    grid, layout = visualize.attention_grid(model, images, pixels)
    assert grid.dtype == np.uint8 and grid.shape == (layout.height, layout.width, 3)
    assert np.array_equal(grid, visualize.attention_image_grid(model, images, pixels))

    def panel(g, net, m, row=0):
        y0, y1, x0, x1 = layout.box(row, net, m)
        return g[y0:y1, x0:x1].astype(np.int32)

    assert all(np.abs(panel(grid, "student1", m) - panel(grid, "student2", m)).mean() > 2 for m in range(3))
    # The first column shows the given pixels (resized to the panel).
    y0, y1, x0, x1 = layout.box(1)
    expected = tf.image.resize(pixels[1:2].astype(np.float32) / 255.0, (64, 64)).numpy()[0]
    np.testing.assert_allclose(grid[y0:y1, x0:x1] / 255.0, expected, atol=1 / 255 + 1e-6)
    # Student 2 made a copy of student 1: now their panels are identical, the leader's are not.
    model.common_students[1].set_weights(model.common_students[0].get_weights())
    same = visualize.attention_image_grid(model, images, pixels)
    for m in range(3):
        assert np.array_equal(panel(same, "student1", m), panel(same, "student2", m))
        assert not np.array_equal(panel(same, "student1", m), panel(same, "leader", m))


def test_callback_writes_the_grid_to_tensorboard(tmp_path):
    keras.utils.set_random_seed(0)
    config = FFSDConfig(model="resnet8", num_classes=4, input_shape=(16, 16, 3))
    model = FFSD(config)
    model.compile({role: keras.optimizers.SGD(0.05) for role in model.active_roles})
    x = np.random.default_rng(1).normal(size=(64, 16, 16, 3)).astype(np.float32)
    y = np.random.default_rng(2).integers(0, 4, 64)
    log_dir = str(tmp_path / "tb")
    callback = visualize.AttentionImages(x[:3], log_dir, every=2)
    model.fit(x, y, batch_size=32, epochs=3, verbose=0, callbacks=[callback])
    found = []
    for name in os.listdir(log_dir):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(log_dir, name)):
            for value in event.summary.value:
                if value.tag == "attention":
                    width, height, png = tf.make_ndarray(value.tensor)
                    found.append((event.step, int(width), int(height), tf.io.decode_png(png).numpy()))
    assert [f[0] for f in found] == [2]  # epochs 1..3, every 2nd
    _, width, height, image = found[0]
    assert image.shape == (height, width, 3) and image.dtype == np.uint8
    layout = visualize.GridLayout(3, ("student1", "student2", "leader"), 3, visualize.DEFAULT_PANEL)
    assert (height, width) == (layout.height, layout.width)
    y0, y1, x0, x1 = layout.box(0, "student1", 2)
    assert coloured_pixels(image[y0:y1, x0:x1]) > 64 * 64 // 2


def test_callback_image_equals_the_grid(tmp_path):
    keras.utils.set_random_seed(0)
    model = FFSD(FFSDConfig(model="resnet8", num_classes=4, input_shape=(16, 16, 3), num_students=3))
    model.compile({role: keras.optimizers.SGD(0.05) for role in model.active_roles})
    x = np.random.default_rng(1).normal(size=(32, 16, 16, 3)).astype(np.float32)
    y = np.random.default_rng(2).integers(0, 4, 32)
    log_dir = str(tmp_path / "tb")
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[visualize.AttentionImages(x[:2], log_dir)])
    images = [tf.io.decode_png(tf.make_ndarray(v.tensor)[2]).numpy()
              for name in os.listdir(log_dir)
              for e in tf.compat.v1.train.summary_iterator(os.path.join(log_dir, name))
              for v in e.summary.value if v.tag == "attention"]
    assert len(images) == 1
    np.testing.assert_array_equal(images[0], visualize.attention_image_grid(model, x[:2]))


@pytest.mark.parametrize("case", ["missing", "not_a_run", "no_checkpoint", "no_history", "bad_images", "two_dirs"])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(run_dir, tmp_path, case):
    out = tmp_path / "figs"
    target = tmp_path / "run"
    if case in ("no_checkpoint", "no_history"):
        shutil.copytree(run_dir, target, ignore=shutil.ignore_patterns("figures"))
        shutil.rmtree(target / ("checkpoints" if case == "no_checkpoint" else "tensorboard"))
        if case == "no_history":
            os.remove(target / "history.json")
    elif case == "not_a_run":
        target.mkdir()
    args = {
        "missing": [str(tmp_path / "nope")],
        "not_a_run": [str(target)],
        "no_checkpoint": [str(target)],
        "no_history": [str(target)],
        "bad_images": [run_dir, "--images=0"],
        "two_dirs": [run_dir, run_dir],
    }[case]
    proc = cli(*args, f"--output_dir={out}")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not out.exists()
