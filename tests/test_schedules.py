"""Loss-weight schedule specs and MultiStepLR against NumPy references."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf
import keras

from ffsd_tf.schedules import (MultiStepLR, WeightSchedule,
                               parse_weight_schedule, validate_milestones)


# ---------------------------------------------------------------- weights
def test_exp_warmup_matches_authors_values():
    s = parse_weight_schedule("exp_warmup:5")
    got = [s(e) for e in range(1, 9)]
    e = np.arange(1, 9, dtype=np.float64)
    want = np.where(e <= 5, np.exp(-5 * (1 - np.minimum(e, 5) / 5) ** 2), 1.0)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_allclose(got[:5], [0.0408, 0.1653, 0.4493, 0.8187, 1.0],
                               atol=1e-4)


def test_constant_linear_piecewise():
    assert [parse_weight_schedule("constant")(e) for e in (1, 300)] == [1, 1]
    lin = parse_weight_schedule("linear_warmup:4")
    assert [lin(e) for e in range(1, 7)] == [0.25, 0.5, 0.75, 1, 1, 1]
    pw = parse_weight_schedule("piecewise:3=0.5, 10=2,20=0")
    assert [pw(e) for e in (1, 2, 3, 9, 10, 19, 20, 99)] == \
        [0, 0, 0.5, 0.5, 2, 2, 0, 0]
    assert parse_weight_schedule("piecewise:1=0.7")(1) == 0.7
    assert parse_weight_schedule("piecewise:0=0.7")(1) == 0.7


def test_str_and_equality():
    for spec in ("constant", "exp_warmup:5", "linear_warmup:10",
                 "piecewise:1=0.5,150=1"):
        s = parse_weight_schedule(spec)
        assert str(s) == spec and isinstance(s, WeightSchedule)
        assert parse_weight_schedule(str(s)) == s
    assert parse_weight_schedule("piecewise:1=1") == \
        parse_weight_schedule("piecewise:1=1.0")
    with pytest.raises(dataclasses.FrozenInstanceError):
        parse_weight_schedule("constant").kind = "x"


@pytest.mark.parametrize("spec", [
    "", "const", "constant:3", "exp_warmup", "exp_warmup:", "exp_warmup:0",
    "exp_warmup:2.5", "linear_warmup:x", "piecewise:", "piecewise:1",
    "piecewise:1=a", "piecewise:5=1,5=2", "piecewise:5=1,3=2",
    "piecewise:-1=1", "piecewise:1=nan", "cosine:5", None,
])
def test_bad_specs(spec):
    with pytest.raises(ValueError) as err:
        parse_weight_schedule(spec)
    msg = str(err.value)
    assert "\n" not in msg and repr(spec) in msg and "exp_warmup:E" in msg


def test_epoch_is_one_based():
    with pytest.raises(ValueError, match="1-based"):
        parse_weight_schedule("constant")(0)


# ---------------------------------------------------------------- milestones
def test_validate_milestones():
    assert validate_milestones([150, 225], 300) == (150, 225)
    assert validate_milestones([], 10) == ()
    for bad in ([0, 5], [5, 5], [6, 5], [3, 10], [2.5], ["a"]):
        with pytest.raises(ValueError, match="milestones"):
            validate_milestones(bad, 10)


# ---------------------------------------------------------------- MultiStepLR
def np_multistep(step, base, milestones, gamma, spe, warmup):
    if step < warmup * spe:
        return base * (step + 1) / (warmup * spe)
    epoch0 = step // spe
    return base * gamma ** sum(epoch0 >= m for m in milestones)


def torch_epoch_lrs(base, milestones, gamma, epochs):
    """torch MultiStepLR stepped once per epoch: lr used in 1-based epoch e."""
    lrs, lr = [], base
    for e in range(1, epochs + 1):
        lrs.append(lr)
        if e in milestones:  # scheduler.step() at the end of epoch e
            lr *= gamma
    return lrs


STEPS = np.arange(0, 3 * 7)  # spe 3, epochs 1..7 (boundaries included)


@pytest.mark.parametrize("warmup", [0, 1, 2])
def test_multistep_matches_numpy(warmup):
    sched = MultiStepLR(0.1, [2, 4], 0.1, steps_per_epoch=3,
                        warmup_epochs=warmup)
    want = [np_multistep(s, 0.1, [2, 4], 0.1, 3, warmup) for s in STEPS]
    eager = [float(sched(s)) for s in STEPS]
    graph = tf.function(lambda s: sched(s))
    xla = tf.function(lambda s: sched(s), jit_compile=True)
    for fn in (graph, xla):
        got = [float(fn(tf.constant(s, tf.int64))) for s in STEPS]
        np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(eager, want, rtol=1e-6)
    if warmup == 0:  # and equals torch's per-epoch MultiStepLR
        per_epoch = torch_epoch_lrs(0.1, [2, 4], 0.1, 7)
        np.testing.assert_allclose(want, np.repeat(per_epoch, 3), rtol=1e-12)
    else:
        np.testing.assert_allclose(eager[warmup * 3 - 1], 0.1, rtol=1e-7)


def test_multistep_paper_epochs():
    sched = MultiStepLR(0.1, [150, 225], steps_per_epoch=2)
    lr = {e: float(sched(2 * (e - 1))) for e in (1, 150, 151, 225, 226, 299)}
    np.testing.assert_allclose(
        [lr[e] for e in sorted(lr)], [.1, .1, .01, .01, .001, .001], rtol=1e-6)


def test_multistep_with_optimizer_iterations_and_config():
    sched = MultiStepLR(0.2, [1], 0.5, steps_per_epoch=2, warmup_epochs=1)
    opt = keras.optimizers.SGD(sched)
    v = tf.Variable([1.0])
    lrs = []
    for _ in range(4):
        lrs.append(float(opt.learning_rate))
        opt.apply_gradients([(tf.constant([0.0]), v)])
    np.testing.assert_allclose(lrs, [0.1, 0.2, 0.1, 0.1], rtol=1e-6)

    clone = MultiStepLR.from_config(sched.get_config())
    assert clone.get_config() == sched.get_config()
    restored = keras.optimizers.schedules.deserialize(
        keras.optimizers.schedules.serialize(sched))
    assert isinstance(restored, MultiStepLR)
    assert float(restored(0)) == pytest.approx(0.1)


def test_multistep_no_milestones_and_bad_args():
    assert float(MultiStepLR(0.3, [], steps_per_epoch=5)(10 ** 6)) == \
        pytest.approx(0.3)
    with pytest.raises(ValueError):
        MultiStepLR(0.1, [3, 2], steps_per_epoch=5)
    with pytest.raises(ValueError):
        MultiStepLR(0.1, [2], steps_per_epoch=0)
    with pytest.raises(ValueError):
        MultiStepLR(0.1, [2], steps_per_epoch=5, warmup_epochs=-1)
