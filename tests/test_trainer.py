"""The FFSD trainer: gradient routing, one backward pass, per-role optimizers, learning, deployment."""

import numpy as np
import pytest
import tensorflow as tf

from ffsd_tf.trainer import FFSD, FFSDConfig, student_name
from tests.conftest import TINY_COHORT as TINY


def batch(rng, n=8, classes=10, size=16):
    x = rng.normal(size=(n, size, size, 3)).astype(np.float32)
    y = rng.integers(0, classes, n).astype(np.int32)
    return tf.constant(x), tf.constant(y)


def owners(model: FFSD):
    """variable ref -> the sub-model that owns it (student1, leader, trans_fusion, fusion, sd_student2...)."""
    return {id(v): name for name, net in model.networks.items() for v in net.trainable_variables}


def moved_by(model, term_name, images, labels):
    """The sub-models whose variables get a non-zero gradient from one (unweighted) loss term."""
    variables = [v for r in model.active_roles for v in model.role_variables(r)]
    with tf.GradientTape() as tape:
        _, terms, _ = model.compute_losses(images, labels, training=True)
        value = terms[term_name]
    grads = tape.gradient(value, variables)
    table = owners(model)
    return {table[id(v)] for v, g in zip(variables, grads) if g is not None and float(tf.reduce_sum(tf.abs(g))) > 0}


EXPECTED_OWNERS = {
    "student1/ce": {"student1"},
    "student1/kl": {"student1"},
    "student2/ce": {"student2"},
    "student2/kl": {"student2"},
    "student2/diversity": {"student2"},
    "student2/sd_diversity": {"student2"},
    "student3/diversity": {"student3"},
    "student3/sd_diversity": {"student3"},
    "student3/kl": {"student3"},
    "fusion/ce": {"fusion"},
    "fusion/kl": {"fusion"},
    "leader/ce": {"leader"},
    "leader/kl": {"leader"},
    "leader/fusion_feature": {"leader"},
    "leader/fusion_sigma": {"leader", "trans_fusion"},
    "leader/sd": {"leader"},
    "sd_student2/sd": {"sd_student2"},
    "sd_student3/sd": {"sd_student3"},
    "sd_leader/sd": {"sd_leader"},
    "sd_student2/loss": {"sd_student2"},
    "sd_student3/loss": {"sd_student3"},
    "sd_leader/loss": {"sd_leader"},
}


@pytest.fixture(scope="module")
def cohort3():
    model = FFSD(FFSDConfig(num_students=3, **TINY), loss_weights="paper")  # every term weighted (the recipe's mutual KL is 0)
    model.set_epoch(10)
    return model


@pytest.mark.parametrize("term", sorted(EXPECTED_OWNERS))
def test_each_loss_term_moves_only_its_owner(cohort3, term):
    images, labels = batch(np.random.default_rng(1))
    assert moved_by(cohort3, term, images, labels) == EXPECTED_OWNERS[term]


def test_every_term_is_covered(cohort3):
    images, labels = batch(np.random.default_rng(1))
    _, terms, _ = cohort3.compute_losses(images, labels)
    produced = {k for k in terms if not k.endswith("/loss") or k.startswith("sd_")}
    assert produced == set(EXPECTED_OWNERS) | {"student1/ce", "student3/ce"}


def test_one_backward_pass_equals_per_model_gradients(cohort3):
    """d(sum of all losses)/d(theta_r) == d(loss of role r)/d(theta_r) for every role."""
    images, labels = batch(np.random.default_rng(2))
    model = cohort3
    roles = model.active_roles
    variables = {r: model.role_variables(r) for r in roles}
    with tf.GradientTape(persistent=True) as tape:
        per_role, _, _ = model.compute_losses(images, labels, training=True)
        total = tf.add_n(list(per_role.values()))
    joint = tape.gradient(total, [v for r in roles for v in variables[r]])
    separate = [g for r in roles for g in tape.gradient(per_role[r], variables[r])]
    assert len(joint) == len(separate) > 0
    for a, b in zip(joint, separate):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)
    # And no role's loss reaches another role's variables.
    for r in roles:
        others = [v for o in roles if o != r for v in variables[o]]
        assert all(g is None or float(tf.reduce_sum(tf.abs(g))) == 0 for g in tape.gradient(per_role[r], others)), r


def test_student_decoders_are_applied_in_inference_mode_and_trained_in_training_mode(cohort3):
    """Applying a decoder never touches its BN statistics; training it does (once per step)."""
    images, labels = batch(np.random.default_rng(3))
    decoder = cohort3.sd_decoders["student2"]
    bn = [v for v in decoder.non_trainable_variables if "moving_mean" in v.path][0]
    before = bn.numpy().copy()
    cohort3.compute_losses(images, labels, training=True)
    assert not np.allclose(before, bn.numpy())
    before = bn.numpy().copy()
    cohort3.compute_losses(images, labels, training=False)
    np.testing.assert_array_equal(before, bn.numpy())


@pytest.mark.parametrize(
    "kwargs,students,leader,fusion,decoders",
    [
        (dict(), 2, True, True, ["student2", "leader"]),
        (dict(num_students=6), 6, True, True, [f"student{i}" for i in range(2, 7)] + ["leader"]),
        (dict(num_students=1), 1, True, True, ["leader"]),
        (dict(diversity="none"), 2, True, True, ["leader"]),
        (dict(diversity="l2"), 2, True, True, ["leader"]),
        (dict(self_distillation="none"), 2, True, True, []),
        (dict(self_distillation="students"), 2, True, True, ["student2"]),
        (dict(self_distillation="leader"), 2, True, True, ["leader"]),
        (dict(fusion=False), 2, True, False, ["student2"]),
        (dict(leader=False), 2, False, False, ["student2"]),
        (dict(leader=False, mutual_learning=False, diversity="none"), 2, False, False, []),
    ],
)
def test_ablation_switches_build_the_right_cohort(rng, kwargs, students, leader, fusion, decoders):
    model = FFSD(FFSDConfig(**{**TINY, **kwargs}))
    assert len(model.common_students) == students
    assert (model.leader is not None) == leader
    assert (model.fusion is not None) == fusion == (model.trans_fusion is not None)
    assert sorted(model.sd_decoders) == sorted(decoders)
    per_role, terms, _ = model.compute_losses(*batch(rng))
    assert all(np.isfinite(float(v)) for v in terms.values())
    if not kwargs.get("mutual_learning", True):
        assert not any(k.endswith("/kl") for k in terms)
    if kwargs.get("diversity") == "l2":
        assert float(terms["student1/diversity"]) < 0 and float(terms["student2/diversity"]) < 0


def test_dml_plus_leader_distils_from_the_students_mean_logits(rng):
    """fusion=False: the leader's KL target is z_e = mean of the students' logits."""
    from ffsd_tf import losses

    model = FFSD(FFSDConfig(fusion=False, **TINY))
    images, labels = batch(rng)
    _, terms, logits = model.compute_losses(images, labels, training=False)
    z_e = (logits["student1"] + logits["student2"]) / 2
    np.testing.assert_allclose(
        float(terms["leader/kl"]), float(losses.distillation_kl(logits["leader"], z_e, 2.0)), rtol=1e-5
    )


def test_deployable_leader_holds_only_the_leader_backbone():
    from ffsd_tf.networks import build_network

    model = FFSD(FFSDConfig(**TINY))
    deploy = model.deployable_leader()
    leader_refs = {id(v) for v in model.leader.variables}
    assert {id(v) for v in deploy.variables} == leader_refs
    others = [model.trans_fusion, model.fusion, *model.common_students, *model.sd_decoders.values()]
    assert not any(id(v) in leader_refs for net in others for v in net.variables)
    assert deploy.count_params() == build_network("resnet8", num_classes=10, input_shape=(16, 16, 3)).count_params()
    x = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(deploy(x).numpy(), model.leader(x)["logits"].numpy(), rtol=1e-6)


def test_loss_weights_follow_their_schedules():
    import math

    model = FFSD(
        FFSDConfig(**TINY),
        loss_weights={"diversity": lambda e: 1e-5 * math.exp(-5 * (1 - min(e, 5) / 5) ** 2), "kl": lambda e: 0.5},
    )
    values = model.set_epoch(1)
    assert values["kl"] == 0.5 and abs(values["diversity"] - 1e-5 * math.exp(-5 * 0.64)) < 1e-12
    assert float(model.loss_weight_vars["diversity"]) == pytest.approx(values["diversity"], rel=1e-6)
    assert int(model.epoch) == 1
    with pytest.raises(ValueError, match="unknown loss weights"):
        FFSD(FFSDConfig(**TINY), loss_weights={"lambda_typo": lambda e: 1.0})


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="num_students"):
        FFSDConfig(num_students=0)
    with pytest.raises(ValueError, match="diversity"):
        FFSDConfig(diversity="cosine")


def test_eval_metrics_are_named_per_model(rng):
    import keras

    model = FFSD(FFSDConfig(**TINY))
    model.compile({r: keras.optimizers.SGD(0.01) for r in model.active_roles})
    images, labels = batch(rng, n=16)
    logs = model.evaluate(images, labels, batch_size=8, verbose=0, return_dict=True)
    for key in ["student1/acc", "student2/acc", "fusion/acc", "leader/acc", "students_mean/acc", "ensemble/acc", "ens_any/acc"]:
        assert key in logs
    # Reference accuracies from the models' own predictions.
    z = {student_name(i): s(images)["logits"].numpy() for i, s in enumerate(model.common_students)}
    correct = {k: v.argmax(-1) == labels.numpy() for k, v in z.items()}
    assert logs["student1/acc"] == pytest.approx(correct["student1"].mean(), abs=1e-6)
    assert logs["ens_any/acc"] == pytest.approx((correct["student1"] | correct["student2"]).mean(), abs=1e-6)
    assert logs["students_mean/acc"] == pytest.approx((correct["student1"].mean() + correct["student2"].mean()) / 2, abs=1e-6)
    soft = sum(np.exp(v - v.max(-1, keepdims=True)) / np.exp(v - v.max(-1, keepdims=True)).sum(-1, keepdims=True) for v in z.values())
    assert logs["ensemble/acc"] == pytest.approx((soft.argmax(-1) == labels.numpy()).mean(), abs=1e-6)


def test_each_optimizer_applies_exactly_its_own_update(rng):
    """After one train_step, every variable moved by its own role's torch-style update, once."""
    from ffsd_tf.optimizers import TorchAdam, TorchSGD

    model = FFSD(FFSDConfig(num_students=2, **TINY), loss_weights="paper")  # every term weighted
    model.set_epoch(10)
    hyper = {"students": (0.1, 1e-4), "leader": (0.05, 2e-4), "fusion": (0.2, 1e-5), "decoders": (1e-3, 1e-4)}
    opts = {r: TorchSGD(lr, momentum=0.9, nesterov=True, weight_decay=wd) for r, (lr, wd) in hyper.items() if r != "decoders"}
    opts["decoders"] = TorchAdam(hyper["decoders"][0], weight_decay=hyper["decoders"][1])
    model.compile(opts)
    images, labels = batch(rng)
    variables = {r: model.role_variables(r) for r in model.active_roles}
    before = {r: [v.numpy().copy() for v in vs] for r, vs in variables.items()}
    # Gradients from the same state (BN statistics do not enter training-mode gradients), computed
    # in a graph like train_step's so that only the optimizers' arithmetic is compared.
    @tf.function
    def role_gradients():
        with tf.GradientTape(persistent=True) as tape:
            per_role, _, _ = model.compute_losses(images, labels, training=True)
        return {r: tape.gradient(per_role[r], variables[r]) for r in variables}

    state = [(v, v.numpy().copy()) for v in model.non_trainable_variables]
    grads = {r: [g.numpy() for g in gs] for r, gs in role_gradients().items()}
    for v, value in state:  # undo the BN statistics updates (decoders read them in inference mode)
        v.assign(value)
    model.train_step((images, labels))
    for role, values in before.items():
        lr, wd = hyper[role]
        assert int(model.optimizers[role].iterations) == 1, role
        for w0, g, v in zip(values, grads[role], variables[role]):
            g = g + wd * w0
            if role == "decoders":  # torch Adam, first step
                m, s = 0.1 * g, 0.001 * g * g
                expected = w0 - lr / 0.1 * m / (np.sqrt(s) / np.sqrt(0.001) + 1e-8)
            else:  # torch nesterov SGD, first step: buf = g, update g + 0.9 * buf
                expected = w0 - lr * (g + 0.9 * g)
            # Compare the step itself; eager and graph gradients differ by float32 rounding only.
            actual_step, expected_step = v.numpy() - w0, expected - w0
            # Adam's first step is ~lr*g/(|g|+eps): where |g| is near eps it amplifies rounding.
            stable = np.abs(g) > 1e-6 if role == "decoders" else np.ones_like(g, bool)
            assert stable.mean() > 0.5, (role, v.path)
            error = np.abs(actual_step - expected_step)[stable].max()
            assert error <= 1e-3 * np.abs(expected_step).max() + 1e-8, (role, v.path, error)


@pytest.mark.parametrize("jit", [False, True])
def test_fit_learns_a_learnable_task(jit):
    """A few epochs on a separable synthetic task: every model's loss falls, the leader learns."""
    import keras

    from ffsd_tf.optimizers import TorchAdam, TorchSGD

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    n, classes = 192, 4
    labels = rng.integers(0, classes, n).astype(np.int32)
    patterns = rng.normal(size=(classes, 16, 16, 3)).astype(np.float32)
    images = patterns[labels] + 0.5 * rng.normal(size=(n, 16, 16, 3)).astype(np.float32)
    model = FFSD(FFSDConfig(model="resnet8", num_classes=classes, input_shape=(16, 16, 3)))
    model.set_epoch(10)
    opts = {r: TorchSGD(0.05, weight_decay=1e-4) for r in ("students", "leader", "fusion")}
    opts["decoders"] = TorchAdam(1e-3)
    model.compile(opts, jit_compile=jit)
    before = model.evaluate(images, labels, batch_size=64, verbose=0, return_dict=True)
    hist = model.fit(images, labels, batch_size=32, epochs=4, verbose=0, shuffle=True).history
    after = model.evaluate(images, labels, batch_size=64, verbose=0, return_dict=True)
    for key in ("student1/ce", "student2/ce", "leader/ce", "fusion/ce"):
        assert hist[key][-1] < hist[key][0] * 0.7, (key, hist[key])
    assert after["leader/loss"] < before["leader/loss"]
    assert after["leader/acc"] > 0.6, after


def test_fit_logs_train_metrics_with_a_single_student(rng):
    """n = 1: every eval metric name is also a train metric name; fit must still log train values."""
    import keras

    model = FFSD(FFSDConfig(num_students=1, **TINY))
    model.compile({r: keras.optimizers.SGD(0.01) for r in model.active_roles})
    images, labels = batch(rng, n=16)
    hist = model.fit(images, labels, batch_size=8, epochs=1, verbose=0, validation_data=(images, labels)).history
    assert hist["student1/ce"][0] > 0 and hist["leader/ce"][0] > 0 and hist["loss"][0] > 0
    assert "val_leader/acc" in hist
