"""The Python API (issue 15): schedules inside the model, compile() defaults, your own backbone.

* ``FFSD(...).fit(ds)`` with no callback logs, epoch by epoch, the loss weights the CLI logs for the
  same recipe (the CLI trains through the same ``fit``; nothing else sets them);
* ``compile()`` gives the paper's optimizers per role; one optimizer is cloned per role;
* a ``keras.applications`` backbone trains and its leader exports; each backbone FFSD cannot use
  is a one-line ``ValueError`` at construction;
* the README's "Use it from Python" block is ``examples/python_api.py`` (which CI runs).
"""

import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

from ffsd_tf import (FFSD, FFSDConfig, PAPER_LOSS_WEIGHTS, RECIPE_LOSS_WEIGHTS, RECIPE_OPTIONS, export_model, from_keras,
                     load_dataset)
from ffsd_tf.optimizers import TorchAdam, TorchSGD
from tests.conftest import ROOT
SYNTHETIC = dict(synthetic_classes=4, synthetic_train=96, synthetic_test=32, batch_size=32, image_size=16)


def synthetic():
    return load_dataset("synthetic", **SYNTHETIC)


def weight_history(history: list[dict]) -> dict:
    return {k: [h[k] for h in history] for k in history[0] if k.startswith("weights/")}


def test_fit_without_callbacks_logs_the_clis_loss_weights(tmp_path):
    """Recipe: the CLI with experiments/recipes/robust.flags vs FFSD(...) with its default weights."""
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "ffsd_tf.run", f"--flagfile={ROOT}/experiments/recipes/robust.flags",
           "--dataset=synthetic", "--synthetic_classes=4", "--synthetic_train=96", "--synthetic_test=32",
           "--image_size=16", "--batch_size=32", "--model=resnet8", "--epochs=3", "--milestones=",
           f"--output_dir={out}", "--verbose=quiet"]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    cli = weight_history(json.loads((out / "history.json").read_text()))

    keras.utils.set_random_seed(0)
    data = synthetic()
    model = FFSD("resnet8", num_classes=data.num_classes, input_shape=data.image_shape)
    model.compile()
    history = model.fit(data.train_stream(), epochs=3, steps_per_epoch=data.steps_per_epoch, verbose=0)
    api = {k: v for k, v in history.history.items() if k.startswith("weights/")}

    assert set(cli) == {"weights/kl", "weights/fusion_kl", "weights/leader_kl", "weights/diversity",
                        "weights/fusion", "weights/self_distillation"}
    assert api == cli
    cli_mask = json.loads((out / "config.json").read_text())["model"]["leader_kl_mask"]
    assert cli_mask == model.config.leader_kl_mask == "teacher_correct"  # and the same leader KL mask
    warm = [np.exp(-5 * (1 - e / 5) ** 2) for e in (1, 2, 3)]  # the recipe warms its terms up over 5 epochs
    np.testing.assert_allclose(cli["weights/kl"], [0.0, 0.0, 0.0])  # but has no mutual KL
    np.testing.assert_allclose(cli["weights/leader_kl"], warm, rtol=1e-6)
    np.testing.assert_allclose(cli["weights/self_distillation"], np.multiply(warm, 1000.0), rtol=1e-6)


def test_named_weight_sets_differ_only_in_the_kl_terms():
    config = FFSDConfig(model="resnet8", num_classes=4, input_shape=(16, 16, 3))
    paper, recipe = FFSD(config, loss_weights="paper"), FFSD(config)
    warmed = FFSD(config, loss_weights="kl_warmup")
    p, r, w = paper.set_epoch(1), recipe.set_epoch(1), warmed.set_epoch(1)
    for key in ("fusion_kl", "leader_kl"):
        assert p[key] == PAPER_LOSS_WEIGHTS[key][0] == 1.0 and r[key] == w[key] == pytest.approx(np.exp(-5 * 0.64))
    assert p["kl"] == 1.0 and w["kl"] == pytest.approx(np.exp(-5 * 0.64)) and r["kl"] == 0.0
    for key in ("diversity", "fusion", "self_distillation"):
        assert p[key] == r[key] == w[key]
    assert paper.set_epoch(5) == warmed.set_epoch(5)  # warm-ups over: the paper's values
    assert recipe.set_epoch(5) == {**paper.set_epoch(5), "kl": 0.0}  # the recipe: no mutual KL
    assert {k: v[0] for k, v in RECIPE_LOSS_WEIGHTS.items()} == {**{k: v[0] for k, v in PAPER_LOSS_WEIGHTS.items()},
                                                                 "kl": 0.0}
    custom = FFSD("resnet8", num_classes=4, input_shape=(16, 16, 3),
                  loss_weights={"kl": 0.5, "fusion": (3.0, "linear_warmup:2"), "diversity": lambda e: e * 1e-6})
    values = custom.set_epoch(1)
    assert values["kl"] == 0.5 and values["fusion"] == 1.5 and values["diversity"] == 1e-6
    with pytest.raises(ValueError, match="unknown loss weights"):
        FFSD("resnet8", num_classes=4, input_shape=(16, 16, 3), loss_weights={"klx": 1.0})
    with pytest.raises(ValueError, match="named set"):
        FFSD("resnet8", num_classes=4, input_shape=(16, 16, 3), loss_weights="robust")


def test_the_recipes_leader_kl_mask_is_the_default_where_ffsd_builds_the_config():
    """FFSD("name") / FFSD(backbone) with the recipe (or weights over it) masks the leader's KL as
    robust.flags does; the paper's weights, no leader, an explicit option or a written FFSDConfig
    keep what they say."""
    shape = {"num_classes": 4, "input_shape": (16, 16, 3)}
    mask = lambda model: model.config.leader_kl_mask  # noqa: E731
    assert mask(FFSD("resnet8", **shape)) == RECIPE_OPTIONS["leader_kl_mask"] == "teacher_correct"
    assert mask(FFSD("resnet8", **shape, loss_weights={"fusion": 3.0})) == "teacher_correct"
    assert mask(FFSD(mobilenet_backbone())) == "teacher_correct"
    assert mask(FFSD("resnet8", **shape, loss_weights="paper")) == "none"
    assert mask(FFSD("resnet8", **shape, loss_weights="kl_warmup")) == "none"
    assert mask(FFSD("resnet8", **shape, leader_kl_mask="none")) == "none"
    assert mask(FFSD("resnet8", **shape, leader=False)) == "none"  # no leader, no mask (and no error)
    assert mask(FFSD(FFSDConfig(model="resnet8", **shape))) == "none"  # a config is taken as written


def test_compile_without_arguments_gives_the_papers_optimizers():
    model = FFSD("resnet8", num_classes=4, input_shape=(16, 16, 3))
    model.compile()
    opts = model.optimizers
    assert set(opts) == {"students", "leader", "fusion", "decoders"}
    for role in ("students", "leader", "fusion"):
        o = opts[role]
        assert isinstance(o, TorchSGD) and o.momentum == 0.9 and o.nesterov
        assert float(o.learning_rate) == pytest.approx(0.1)
    assert opts["students"].l2 == opts["leader"].l2 == 1e-4 and opts["fusion"].l2 == 1e-5
    assert isinstance(opts["decoders"], TorchAdam) and opts["decoders"].l2 == 1e-4
    assert float(opts["decoders"].learning_rate) == pytest.approx(1e-3)


@pytest.mark.parametrize("given", ["sgd", keras.optimizers.Adam(2e-3)])
def test_one_optimizer_is_cloned_per_role(given):
    model = FFSD("resnet8", num_classes=4, input_shape=(16, 16, 3))
    model.compile(given)
    opts = list(model.optimizers.values())
    assert len(opts) == 4 and len({id(o) for o in opts}) == 4
    assert len({type(o) for o in opts}) == 1
    slots = [id(v) for o in opts for v in o.variables]
    assert len(slots) == len(set(slots))  # each role its own slots and step counter
    if not isinstance(given, str):
        assert all(float(o.learning_rate) == pytest.approx(2e-3) for o in opts)
        assert given not in opts
    with pytest.raises(ValueError, match="computes its own losses"):
        model.compile("sgd", loss="mse")


def mobilenet_backbone(num_classes=4):
    base = keras.applications.MobileNetV2(input_shape=(32, 32, 3), include_top=False, weights=None)
    return from_keras(base, ["block_2_add", "block_5_add", "block_12_add"], num_classes)  # 8x8, 4x4, 2x2


def test_a_keras_applications_backbone_trains_and_its_leader_exports(tmp_path):
    keras.utils.set_random_seed(0)
    data = load_dataset("synthetic", synthetic_classes=4, synthetic_train=32, synthetic_test=16, batch_size=16)
    model = FFSD(mobilenet_backbone())
    assert model.config.input_shape == (32, 32, 3) and model.config.num_classes == 4
    assert [tuple(f.shape[1:3]) for f in model.leader.output["features"]] == [(8, 8), (4, 4), (2, 2)]
    before = [v.numpy().copy() for v in model.leader.trainable_variables]
    model.compile(keras.optimizers.SGD(0.01))
    model.fit(data.train_stream(), epochs=1, steps_per_epoch=2, verbose=0)
    assert int(model.optimizers["leader"].iterations) == 2
    assert any(not np.array_equal(b, v.numpy()) for b, v in zip(before, model.leader.trainable_variables))
    report = export_model(model, data, export_dir=str(tmp_path / "export"), formats=("savedmodel", "fp32"),
                          max_eval=16, max_representative=8, latency_repeats=1)
    version = tmp_path / "export" / "1"
    loaded = keras.models.load_model(version / "leader.keras")
    images = data.normalize(data.x_test[:4]).numpy()
    np.testing.assert_allclose(loaded(images).numpy(), model.deployable_leader()(images).numpy(), atol=1e-4)
    assert report["path"] == str(version)


def two_stage(h2=8, channels=3, classes=4, name="tiny"):
    inputs = keras.Input((16, 16, channels))
    a = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    b = keras.layers.Conv2D(16, 3, strides=16 // h2, padding="same", activation="relu")(a)
    logits = keras.layers.Dense(classes)(keras.layers.GlobalAveragePooling2D()(b))
    return keras.Model(inputs, {"logits": logits, "features": [a, b]}, name=name)


def test_a_two_stage_backbone_trains():
    """It crashed inside sd_target_loss (a decoder with one output block returned a lone tensor)."""
    model = FFSD(two_stage())
    model.compile(keras.optimizers.SGD(0.01))
    x = np.random.default_rng(0).normal(size=(8, 16, 16, 3)).astype("float32")
    logs = model.fit(x, np.arange(8) % 4, batch_size=8, epochs=1, verbose=0).history
    assert np.isfinite(logs["student2/sd_diversity"][0]) and np.isfinite(logs["sd_leader/loss"][0])


def one_stage():
    inputs = keras.Input((16, 16, 3))
    a = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    return keras.Model(inputs, [keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(a)), a], name="flat")


class Subclassed(keras.Model):
    def call(self, x):
        return x


BAD_BACKBONES = {
    "fewer stages than the decoders need": (lambda: FFSD(one_stage()), r"1 feature stage; .*at least 2"),
    "stage sizes that do not halve": (lambda: FFSD(two_stage(h2=4)), r"16x16 .* 4x4; .*half the size"),
    "mismatched channels": (lambda: FFSD(two_stage(channels=3), input_shape=(16, 16, 1)),
                            r"takes images of shape \(16, 16, 3\), the data has \(16, 16, 1\)"),
    "logits of the wrong width": (lambda: FFSD(two_stage(), num_classes=10), r"logits of shape \(None, 4\).*10"),
    "no stage features": (lambda: FFSD(keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Flatten(),
                                                        keras.layers.Dense(4)], name="plain")),
                          r"returns 1 tensor\(s\); it needs logits and its stage"),
    "not a functional model": (lambda: FFSD(Subclassed(name="sub")), r"must be a functional keras.Model"),
    "a registered network that cannot decode": (lambda: FFSD("resnet8", num_classes=4, input_shape=(10, 10, 3)),
                                                r"'resnet8': stage .* half the size"),
}


@pytest.mark.parametrize("case", sorted(BAD_BACKBONES))
def test_a_backbone_ffsd_cannot_use_is_one_clear_line(case):
    build, message = BAD_BACKBONES[case]
    with pytest.raises(ValueError, match=message) as e:
        build()
    assert "\n" not in str(e.value)


def test_a_one_stage_backbone_trains_without_decoders():
    model = FFSD(one_stage(), self_distillation="none")
    assert model.sd_decoders == {}


def test_the_readme_python_section_is_the_example_ci_runs():
    readme = open(os.path.join(ROOT, "README.md")).read()
    section = readme.split("## Use it from Python", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    example = open(os.path.join(ROOT, "examples", "python_api.py")).read()
    body = example.split("# --- README: Use it from Python ---\n", 1)[1].split("# --- end ---", 1)[0]
    assert block.strip() == body.strip()
    assert len(block.strip().splitlines()) <= 15
