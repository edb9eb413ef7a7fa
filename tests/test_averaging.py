"""Weight averages (``--ema_decay``, ``ffsd_tf.averaging``) and the averaged cohort as the leader's
teacher (``--ema_teacher``): the update rule against NumPy step by step, that no optimizer and no
gradient reaches an average, the leader's Eq. 14 KL against the averaged cohort's logits, the
checkpoint, and the CLI's results."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from ffsd_tf import averaging, rundir
from ffsd_tf.trainer import FFSD, FFSDConfig
from tests.conftest import SYNTHETIC, TINY_COHORT as TINY, run_cli, run_module


def data(seed=0, n=16):
    rng = np.random.default_rng(seed)
    return (tf.constant(rng.normal(size=(n, 16, 16, 3)).astype(np.float32)),
            tf.constant(rng.integers(0, 10, n).astype(np.int32)))


def weights(net):
    return [np.array(v.numpy()) for v in net.weights]


def test_decay_is_warmed_up_then_held_at_the_given_value():
    got = [float(averaging.decay_at(t, 0.9)) for t in range(0, 200, 10)]
    expected = [min(0.9, (1 + t) / (10 + t)) for t in range(0, 200, 10)]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert got[0] == pytest.approx(0.1) and got[-1] == pytest.approx(0.9)


def test_every_average_follows_its_networks_weights_step_by_step():
    """avg_t = d_t avg_{t-1} + (1 - d_t) w_t for every weight (kernels, BN scales and statistics)
    of every classifier, from avg = w_0; a second update by any optimizer would break it."""
    decay = 0.5  # d_t = 0.1, 0.1818..., 0.25, ... , then 0.5 from t = 8: both regimes within 12 steps
    model = FFSD(FFSDConfig(**TINY, ema_decay=decay), loss_weights="recipe")
    model.compile(optimizer=tf.keras.optimizers.SGD(0.1, momentum=0.9))
    live = {"student1": model.common_students[0], "student2": model.common_students[1],
            "fusion": model.fusion, "leader": model.leader}
    assert set(model.averages) == set(live)
    expected = {k: weights(net) for k, net in live.items()}
    for k in live:  # the averages start at the networks' initial weights
        for a, e in zip(weights(model.averages[k]), expected[k]):
            np.testing.assert_array_equal(a, e)
    images, labels = data()
    for t in range(12):
        model.train_step((images, labels))
        d = min(decay, (1 + t) / (10 + t))
        for k, net in live.items():
            expected[k] = [d * a + (1 - d) * w for a, w in zip(expected[k], weights(net))]
            for a, e in zip(weights(model.averages[k]), expected[k]):
                np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)
    assert int(model.ema_updates.numpy()) == 12
    # The averages really moved (the check above is not of constants) and are not the live weights.
    assert not np.allclose(weights(model.averages["leader"])[0], weights(model.leader)[0])


def test_no_optimizer_owns_an_average():
    model = FFSD(FFSDConfig(**TINY, ema_decay=0.9, ema_teacher=True), loss_weights="recipe")
    averaged = {id(v) for net in model.averages.values() for v in net.weights}
    assert averaged and all(not v.trainable for net in model.averages.values() for v in net.weights)
    owned = {id(v) for role in model.active_roles for v in model.role_variables(role)}
    assert not averaged & owned
    assert not averaged & {id(v) for v in model.trainable_variables}


def log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("fusion", [True, False])
def test_the_ema_teacher_is_the_averaged_cohort(fusion):
    """ema_teacher: the leader's Eq. 14 KL (T^2, masked to the samples this teacher gets right)
    is against the averaged fusion classifier on the averaged students' F^L (without fusion: the
    averaged students' mean logits), not the live fusion classifier; no gradient reaches it."""
    config = FFSDConfig(**TINY, fusion=fusion, ema_decay=0.9, ema_teacher=True, leader_kl_mask="teacher_correct")
    model = FFSD(config, loss_weights="recipe")
    other = FFSD(FFSDConfig(**TINY, fusion=fusion), loss_weights="recipe")  # other initial weights
    sources = {"student1": other.common_students[0], "student2": other.common_students[1],
               "fusion": other.fusion, "leader": other.leader}
    for k, net in model.averages.items():  # averages far from the live networks
        net.set_weights(sources[k].get_weights())
    images, _ = data()
    outs = [model.averages[f"student{i}"](images, training=False) for i in (1, 2)]
    if fusion:
        f_e = tf.concat([o["features"][-1] for o in outs], axis=-1)
        teacher = model.averages["fusion"](f_e, training=False)["logits"].numpy()
    else:
        teacher = (outs[0]["logits"].numpy() + outs[1]["logits"].numpy()) / 2
    labels = teacher.argmax(axis=-1)
    labels[:6] = (labels[:6] + 1) % 10  # this teacher is wrong on 6 samples, right on 10
    labels = tf.constant(labels.astype(np.int32))
    with tf.GradientTape() as tape:
        _, terms, logits = model.compute_losses(images, labels, training=True)
    t = config.temperature
    lt, ls = log_softmax(teacher / t), log_softmax(logits["leader"].numpy() / t)
    per_sample = t * t * (np.exp(lt) * (lt - ls)).sum(axis=-1)
    assert float(terms["leader/kl"]) == pytest.approx(per_sample[6:].sum() / 16, rel=1e-4)
    np.testing.assert_allclose(logits["ema_teacher"].numpy(), teacher, rtol=1e-5, atol=1e-6)
    if fusion:  # the live fusion classifier would fail the check above (same mask, same tolerance)
        lf = log_softmax(logits["fusion"].numpy() / t)
        live_kl = t * t * (np.exp(lf) * (lf - ls)).sum(axis=-1)
        assert float(terms["leader/kl"]) != pytest.approx(live_kl[6:].sum() / 16, rel=1e-4)
    grads = tape.gradient(terms["leader/kl"], [v for net in model.averages.values() for v in net.weights])
    assert all(g is None for g in grads)


def test_eval_reports_every_average_beside_its_network_outside_the_loss():
    model = FFSD(FFSDConfig(**TINY, ema_decay=0.9), loss_weights="recipe")
    model.compile()
    logs = model.test_step(data())
    for name in ("student1", "student2", "fusion", "leader"):
        assert f"{name}_ema/acc" in logs and f"{name}_ema/loss" in logs
    # Before any step the averages are their networks: the same accuracy and CE.
    for name in ("student1", "fusion", "leader"):
        assert float(logs[f"{name}_ema/loss"]) == pytest.approx(float(logs[f"{name}/loss"]), rel=1e-5)
    trained = sum(float(logs[f"{k}/loss"]) for k in ("student1", "student2", "fusion", "leader"))
    assert float(logs["loss"]) == pytest.approx(trained, rel=1e-5)  # the trained models' CE sum only


def test_without_ema_decay_nothing_is_averaged_and_checkpoints_are_as_before(tmp_path):
    """A run without averages writes the checkpoint it always wrote (older runs resume unchanged)."""
    model = FFSD(FFSDConfig(**TINY), loss_weights="recipe")
    assert model.averages == {}
    names = [n for n, _ in tf.train.list_variables(rundir.checkpoint_for(model).save(str(tmp_path / "ckpt")))]
    assert any(n.startswith("networks/leader/") for n in names)
    assert not [n for n in names if n.startswith("averages") or "ema_updates" in n]
    averaged = FFSD(FFSDConfig(**TINY, ema_decay=0.9), loss_weights="recipe")
    names = [n for n, _ in tf.train.list_variables(rundir.checkpoint_for(averaged).save(str(tmp_path / "ema")))]
    assert any(n.startswith("averages/leader_ema/") for n in names) and any("ema_updates" in n for n in names)
    with pytest.raises(ValueError, match="keeps no weight averages"):
        model.deployable_leader(average=True)


def test_the_checkpoint_holds_the_averages_and_their_update_count(tmp_path):
    model = FFSD(FFSDConfig(**TINY, ema_decay=0.9, ema_teacher=True), loss_weights="recipe")
    model.compile()
    for _ in range(3):
        model.train_step(data())
    path = rundir.checkpoint_for(model).save(str(tmp_path / "ckpt"))
    restored = FFSD(FFSDConfig(**TINY, ema_decay=0.9, ema_teacher=True), loss_weights="recipe")
    restored.compile()
    rundir.checkpoint_for(restored).restore(path).assert_existing_objects_matched()
    assert int(restored.ema_updates.numpy()) == 3
    for k, net in model.averages.items():
        for a, b in zip(weights(net), weights(restored.averages[k])):
            np.testing.assert_array_equal(a, b)
    shipped = restored.deployable_leader(average=True)
    np.testing.assert_allclose(shipped(data()[0]).numpy(),
                               model.averages["leader"](data()[0], training=False)["logits"].numpy(), rtol=1e-5)


@pytest.mark.parametrize("options, message", [
    (dict(ema_decay=1.0), "ema_decay must be in"),
    (dict(ema_decay=-0.1), "ema_decay must be in"),
    (dict(ema_teacher=True), "needs ema_decay > 0"),
    (dict(ema_teacher=True, ema_decay=0.9, leader=False, leader_kl_mask="none"), "needs leader=True"),
])
def test_a_bad_average_setting_is_refused(options, message):
    with pytest.raises(ValueError, match=message):
        FFSDConfig(**TINY, **options)


def test_cli_ce_with_a_weight_average_reports_both(tmp_path):
    """The fair baseline of a method with averages: CE with --ema_decay gives the network and its
    average in results.json and results.md; --ema_teacher without a decay is one line, exit 1."""
    out = tmp_path / "ce_ema"
    res = run_cli([*SYNTHETIC, "--num_students=1", "--noleader", "--nomutual_learning", "--diversity=none",
                   "--self_distillation=none", "--ema_decay=0.9", "--epochs=2", "--milestones=1",
                   f"--output_dir={out}", "--verbose=line"])
    assert res.returncode == 0, res.stderr[-2000:]
    accuracy = json.loads((out / "results.json").read_text())["accuracy"]
    assert {"student1", "student1_ema"} <= set(accuracy)
    assert "Common student 1 (weight average)" in (out / "results.md").read_text()
    # --average exports the average: leader.keras holds its weights, not the network's.
    export = ["--formats=savedmodel", "--max_eval=16", "--max_representative=8", "--latency_repeats=1"]
    res = run_module("ffsd_tf.export", [str(out), "--average", f"--export_dir={tmp_path / 'avg'}", *export])
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((tmp_path / "avg" / "1" / "report.json").read_text())["weights"] == "average"
    model, _, _ = rundir.restore_model(str(out))
    shipped = keras.models.load_model(tmp_path / "avg" / "1" / "leader.keras")
    for a, b in zip(shipped.get_weights(), model.averages["student1"].get_weights()):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(shipped.get_weights(), model.common_students[0].get_weights()))
    bad = run_cli([*SYNTHETIC, "--ema_teacher", "--epochs=1", f"--output_dir={tmp_path / 'bad'}"])
    assert bad.returncode != 0
    lines = [line for line in bad.stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("error: --ema_teacher") and "ema_decay > 0" in lines[-1], bad.stderr[-800:]
    assert not (tmp_path / "bad").exists()


def test_exporting_the_average_of_a_run_without_one_is_one_line(tmp_path):
    out = tmp_path / "plain"
    res = run_cli([*SYNTHETIC, "--num_students=1", "--noleader", "--nomutual_learning", "--diversity=none",
                   "--self_distillation=none", "--epochs=2", "--milestones=1", f"--output_dir={out}", "--verbose=quiet"])
    assert res.returncode == 0, res.stderr[-2000:]
    res = run_module("ffsd_tf.export", [str(out), "--average", f"--export_dir={tmp_path / 'x'}"])
    assert res.returncode != 0
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert "kept no weight averages" in lines[-1] and "without --average" in lines[-1], res.stderr[-800:]
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_cli_export_average_publishes_the_average_when_training_ends(tmp_path):
    """``--export --export_average`` publishes the leader's weight average (report ``weights:
    average``, ``leader.keras`` = the average); rerun, it is up to date; plain ``--export`` then
    publishes the network as a new version (a published version is keyed by its weights)."""
    out, exports = tmp_path / "run", tmp_path / "exports"
    ce = [*SYNTHETIC, "--num_students=1", "--noleader", "--nomutual_learning", "--diversity=none",
          "--self_distillation=none", "--ema_decay=0.9", "--epochs=2", "--milestones=1",
          f"--output_dir={out}", f"--export_dir={exports}", "--verbose=quiet", "--export"]
    res = run_cli([*ce, "--export_average"])
    assert res.returncode == 0, res.stderr[-2000:]
    assert "weight average" in res.stdout
    assert json.loads((exports / "1" / "report.json").read_text())["weights"] == "average"
    model, _, _ = rundir.restore_model(str(out))
    shipped = keras.models.load_model(exports / "1" / "leader.keras")
    for a, b in zip(shipped.get_weights(), model.averages["student1"].get_weights()):
        np.testing.assert_array_equal(a, b)
    again = run_cli([*ce, "--export_average"])
    assert again.returncode == 0 and "is up to date" in again.stdout, again.stderr[-2000:]
    network = run_cli(ce)
    assert network.returncode == 0, network.stderr[-2000:]
    assert sorted(p.name for p in exports.iterdir()) == ["1", "2"]
    assert json.loads((exports / "2" / "report.json").read_text())["weights"] == "network"


@pytest.mark.parametrize("flags, message", [
    (["--export_average"], "add --export"),
    (["--export", "--export_average"], "needs --ema_decay > 0"),
])
def test_cli_export_average_without_its_preconditions_is_one_line_before_training(tmp_path, flags, message):
    out = tmp_path / "bad"
    res = run_cli([*SYNTHETIC, "--epochs=1", "--milestones=", f"--output_dir={out}", *flags])
    assert res.returncode != 0
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("error: --export_average") and message in lines[-1], res.stderr[-800:]
    assert not out.exists()
