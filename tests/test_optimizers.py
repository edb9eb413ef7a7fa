"""TorchSGD / TorchAdam against independent NumPy versions of torch's rules."""
import copy

import numpy as np
import pytest
import tensorflow as tf
import keras

from ffsd_tf.optimizers import TorchAdam, TorchSGD

SHAPES = [(3,), (4, 5), (2, 3, 3, 2)]
STEPS = 6
WD = 1e-2  # large enough to matter


# ---------------------------------------------------------------- references
def np_sgd(ws, grads, lrs, momentum, nesterov, wd):
    """torch.optim.SGD, dampening 0; float64."""
    ws = [w.astype(np.float64) for w in ws]
    bufs = [None] * len(ws)
    for step, lr in enumerate(lrs):
        for i, w in enumerate(ws):
            g = grads[step][i] + wd * w
            if momentum:
                bufs[i] = g.copy() if bufs[i] is None else momentum * bufs[i] + g
                g = g + momentum * bufs[i] if nesterov else bufs[i]
            ws[i] = w - lr * g
    return ws


def np_adam(ws, grads, lrs, b1, b2, eps, wd):
    """torch.optim.Adam, amsgrad False; float64."""
    ws = [w.astype(np.float64) for w in ws]
    ms = [np.zeros_like(w) for w in ws]
    vs = [np.zeros_like(w) for w in ws]
    for step, lr in enumerate(lrs):
        t = step + 1
        for i, w in enumerate(ws):
            g = grads[step][i] + wd * w
            ms[i] = b1 * ms[i] + (1 - b1) * g
            vs[i] = b2 * vs[i] + (1 - b2) * g * g
            denom = np.sqrt(vs[i]) / np.sqrt(1 - b2 ** t) + eps
            ws[i] = w - lr / (1 - b1 ** t) * ms[i] / denom
    return ws


# ---------------------------------------------------------------- helpers
def make_problem(rng, dtype=np.float32, steps=STEPS):
    ws = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(dtype) for s in SHAPES]
             for _ in range(steps)]
    return ws, grads


def run_keras(opt, ws, grads, fn=None):
    variables = [tf.Variable(w) for w in ws]
    opt.build(variables)
    apply = fn(opt) if fn else opt.apply_gradients
    for step_grads in grads:
        apply(list(zip([tf.constant(g) for g in step_grads], variables)))
    return [v.numpy() for v in variables]


def assert_close(got, want):
    """1e-6 relative to the float64 reference (atol only for values near 0)."""
    for g, w in zip(got, want):
        atol = 1e-9 if g.dtype == np.float64 else 1e-7
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=atol)


# keras' PiecewiseConstantDecay uses values[0] while step <= boundary, so
# iterations 0, 1, 2 use 0.1 and 3.. use 0.01.
DROP = keras.optimizers.schedules.PiecewiseConstantDecay([2], [0.1, 0.01])
DROP_LRS = [0.1] * 3 + [0.01] * (STEPS - 3)  # lr at iterations 0..STEPS-1


# ---------------------------------------------------------------- SGD
DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64])


@DTYPES
@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("momentum", [0.9, 0.0])
def test_sgd_matches_torch_rule(rng, nesterov, momentum, dtype):
    if nesterov and momentum == 0.0:
        with pytest.raises(ValueError):
            TorchSGD(momentum=0.0, nesterov=True)
        return
    ws, grads = make_problem(rng, dtype)
    opt = TorchSGD(0.05, momentum=momentum, nesterov=nesterov, weight_decay=WD)
    got = run_keras(opt, ws, grads)
    assert_close(got, np_sgd(ws, grads, [0.05] * STEPS, momentum, nesterov, WD))
    assert int(opt.iterations) == STEPS


@DTYPES
@pytest.mark.parametrize("nesterov", [True, False])
def test_sgd_exact_after_lr_drop(rng, nesterov, dtype):
    ws, grads = make_problem(rng, dtype)
    got = run_keras(TorchSGD(DROP, 0.9, nesterov, weight_decay=WD), ws, grads)
    assert_close(got, np_sgd(ws, grads, DROP_LRS, 0.9, nesterov, WD))


def test_keras_sgd_differs_after_lr_drop(rng):
    """Contrast: keras' SGD keeps -lr*g in its velocity, so it equals torch
    while lr is constant but not after a drop.  (wd 0: keras' is decoupled.)"""
    ws, grads = make_problem(rng)
    before = grads[:3]
    torch_before = np_sgd(ws, before, DROP_LRS[:3], 0.9, True, 0.0)
    keras_before = run_keras(keras.optimizers.SGD(DROP, 0.9, True), ws, before)
    assert_close(keras_before, torch_before)  # same while lr is constant

    torch_all = np_sgd(ws, grads, DROP_LRS, 0.9, True, 0.0)
    ours = run_keras(TorchSGD(DROP, 0.9, True), ws, grads)
    theirs = run_keras(keras.optimizers.SGD(DROP, 0.9, True), ws, grads)
    assert_close(ours, torch_all)
    diff = max(np.max(np.abs(a - b)) for a, b in zip(theirs, torch_all))
    assert diff > 1e-3


def test_base_class_applies_no_decoupled_decay():
    opt = TorchSGD(weight_decay=1e-4)
    assert opt.weight_decay is None and opt.l2 == 1e-4
    # zero gradient, momentum 0: only the coupled L2 moves w, by lr*wd*w.
    opt = TorchSGD(0.1, momentum=0.0, nesterov=False, weight_decay=0.5)
    got = run_keras(opt, [np.ones(3, np.float32)], [[np.zeros(3, np.float32)]])
    np.testing.assert_allclose(got[0], 1 - 0.1 * 0.5, rtol=1e-6)


# ---------------------------------------------------------------- Adam
@DTYPES
@pytest.mark.parametrize("wd", [0.0, WD])
def test_adam_matches_torch_rule(rng, wd, dtype):
    ws, grads = make_problem(rng, dtype)
    opt = TorchAdam(2e-3, 0.9, 0.999, 1e-8, weight_decay=wd)
    got = run_keras(opt, ws, grads)
    assert_close(got, np_adam(ws, grads, [2e-3] * STEPS, 0.9, 0.999, 1e-8, wd))


def test_adam_with_schedule_and_tiny_gradients(rng):
    """eps placement matters when sqrt(v) is comparable to eps."""
    ws, grads = make_problem(rng)
    grads = [[g * 1e-7 for g in gs] for gs in grads]
    got = run_keras(TorchAdam(DROP, weight_decay=0.0), ws, grads)
    assert_close(got, np_adam(ws, grads, DROP_LRS, 0.9, 0.999, 1e-8, 0.0))


# ---------------------------------------------------------------- graph / XLA
@pytest.mark.parametrize("make_opt,ref", [
    (lambda: TorchSGD(DROP, 0.9, True, weight_decay=WD),
     lambda ws, gs: np_sgd(ws, gs, DROP_LRS, 0.9, True, WD)),
    (lambda: TorchAdam(DROP, weight_decay=WD),
     lambda ws, gs: np_adam(ws, gs, DROP_LRS, 0.9, 0.999, 1e-8, WD)),
], ids=["sgd", "adam"])
@pytest.mark.parametrize("jit", [False, True])
def test_tf_function(rng, make_opt, ref, jit):
    ws, grads = make_problem(rng)
    fn = lambda opt: tf.function(opt.apply_gradients, jit_compile=jit)  # noqa
    assert_close(run_keras(make_opt(), ws, grads, fn), ref(ws, grads))


def test_mirrored_strategy_and_loss_scale(rng):
    ws, grads = make_problem(rng)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        variables = [tf.Variable(w) for w in ws]
        opt = keras.optimizers.LossScaleOptimizer(
            TorchSGD(DROP, 0.9, True, weight_decay=WD), initial_scale=8.0)
        opt.build(variables)

    @tf.function
    def step(gs):
        def replica_fn(gs):
            opt.apply_gradients(zip([g * 8.0 for g in gs], variables))
        strategy.run(replica_fn, args=(gs,))

    for gs in grads:
        step([tf.constant(g) for g in gs])
    assert_close([v.numpy() for v in variables],
                 np_sgd(ws, grads, DROP_LRS, 0.9, True, WD))


def test_model_fit_jit(rng):
    x = rng.standard_normal((16, 4)).astype(np.float32)
    y = rng.standard_normal((16, 1)).astype(np.float32)
    for opt in (TorchSGD(0.01, weight_decay=1e-4), TorchAdam(weight_decay=1e-4)):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        model.compile(opt, "mse", jit_compile=True)
        hist = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
        assert np.isfinite(hist.history["loss"]).all()


# ---------------------------------------------------------------- state
@pytest.mark.parametrize("make_opt", [
    lambda: TorchSGD(DROP, 0.9, True, weight_decay=WD),
    lambda: TorchAdam(DROP, weight_decay=WD),
], ids=["sgd", "adam"])
def test_checkpoint_resume_is_seamless(rng, tmp_path, make_opt):
    ws, grads = make_problem(rng)
    straight = run_keras(make_opt(), ws, grads)

    variables = [tf.Variable(w) for w in ws]
    opt = make_opt()
    opt.build(variables)
    for gs in grads[:4]:  # across the lr drop at iteration 3
        opt.apply_gradients(zip([tf.constant(g) for g in gs], variables))
    path = tf.train.Checkpoint(opt=opt, vars=variables).write(
        str(tmp_path / "ckpt"))

    variables2 = [tf.Variable(np.zeros_like(w)) for w in ws]
    opt2 = make_opt()
    opt2.build(variables2)
    tf.train.Checkpoint(opt=opt2, vars=variables2).read(
        path).assert_consumed()
    assert int(opt2.iterations) == 4
    for gs in grads[4:]:
        opt2.apply_gradients(zip([tf.constant(g) for g in gs], variables2))
    for a, b in zip([v.numpy() for v in variables2], straight):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- config
@pytest.mark.parametrize("opt", [
    TorchSGD(DROP, 0.8, False, weight_decay=1e-4, name="s"),
    TorchAdam(3e-4, 0.8, 0.99, 1e-6, weight_decay=1e-4, name="a"),
], ids=["sgd", "adam"])
def test_config_round_trip(opt):
    config = opt.get_config()
    assert config["weight_decay"] == 1e-4
    clone = type(opt).from_config(copy.deepcopy(config))
    assert clone.get_config() == config
    assert clone.weight_decay is None and clone.l2 == 1e-4
    clone2 = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(clone2) is type(opt) and clone2.get_config() == config
