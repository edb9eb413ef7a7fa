"""Helper processes for ``tests/test_distribute.py`` (run as scripts, never collected by pytest).

``python tests/multiworker_main.py worker OUT_DIR``
    One worker of a ``MultiWorkerMirroredStrategy`` cluster described by ``TF_CONFIG``. Builds a
    tiny FFSD cohort (sync BatchNorm) under the strategy, trains it with ``fit`` on data that only
    this worker has (seeded by its task index, as a real input shard would be) and writes its
    initial and final state to ``OUT_DIR/weights_<index>.npz``. Every worker must end with the
    same state: only the cross-worker all-reduce can make that happen.

``python tests/multiworker_main.py mirrored OUT_DIR``
    Splits the CPU into two logical devices (before TensorFlow initialises them), then trains the
    same cohort from the same weights on the same global batches once on one device and once
    under ``MirroredStrategy`` over both devices, one step at a time, writing
    ``init.npz``, ``single_<step>.npz``, ``mirrored_<step>.npz`` and ``meta.json``.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

TINY = dict(model="resnet8", num_classes=10, input_shape=(16, 16, 3))
GLOBAL_BATCH = 16


def state_arrays(model) -> dict:
    """Every network's weights (trainable and BN statistics), every weight average's, and every
    optimizer's variables."""
    out = {}
    nets = {**model.networks, **model.averaged_networks}
    for net_name, net in nets.items():
        for v in net.weights:
            kind = "trainable" if v.trainable else "non_trainable"
            out[f"{net_name}/{kind}/{v.path}"] = np.array(v.numpy())
    for role, opt in model.optimizers.items():
        for i, v in enumerate(opt.variables):
            out[f"optimizer/{role}/{i:03d}/{v.path}"] = np.array(v.numpy())
    expected = sum(len(n.weights) for n in nets.values())
    expected += sum(len(o.variables) for o in model.optimizers.values())
    assert len(out) == expected, "state keys are not unique"
    return out


def optimizers(weight_decay: float = 1e-4) -> dict:
    from ffsd_tf.optimizers import TorchAdam, TorchSGD

    sgd = lambda wd, name: TorchSGD(0.1, momentum=0.9, nesterov=True, weight_decay=wd, name=name)  # noqa: E731
    return {
        "students": sgd(weight_decay, "students_sgd"),
        "leader": sgd(weight_decay, "leader_sgd"),
        "fusion": sgd(weight_decay / 10, "fusion_sgd"),
        "decoders": TorchAdam(1e-3, weight_decay=weight_decay, name="decoders_adam"),
    }


def build(strategy, seed: int = 0):
    import keras

    from ffsd_tf.trainer import FFSD, PAPER_LOSS_WEIGHTS, FFSDConfig

    with strategy.scope():
        keras.utils.set_random_seed(seed)
        # Every weight constant at the paper's full value (fit sets each epoch's weights from the
        # schedules, and warm-up values near zero would leave terms untested).
        full = {k: value for k, (value, _) in PAPER_LOSS_WEIGHTS.items()}
        # With weight averages (updated inside the replicated step; the live teacher kept).
        model = FFSD(FFSDConfig(sync_batchnorm=True, ema_decay=0.9, **TINY), loss_weights=full)
        model.set_epoch(5)
        model.compile(optimizers())
    return model


def batches(seed: int, n: int):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n * GLOBAL_BATCH, *TINY["input_shape"])).astype(np.float32)
    y = rng.integers(0, TINY["num_classes"], n * GLOBAL_BATCH).astype(np.int32)
    return x, y


def mirrored(out: str) -> None:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras

    single = build(tf.distribute.get_strategy())
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    mirror = build(strategy, seed=1)  # other initial weights on purpose: the copy below must win
    for name, net in single.networks.items():
        mirror.networks[name].set_weights(net.get_weights())
    for name, net in single.averaged_networks.items():
        mirror.averaged_networks[name].set_weights(net.get_weights())
    layers = [layer for net in mirror.networks.values() for layer in net.layers]
    bn = [layer for layer in layers if isinstance(layer, keras.layers.BatchNormalization)]
    meta = {
        "replicas": strategy.num_replicas_in_sync,
        "bn_layers": len(bn),
        "bn_synchronized": sum(bool(layer.synchronized) for layer in bn),
    }
    np.savez(os.path.join(out, "init.npz"), **state_arrays(single))
    np.savez(os.path.join(out, "mirrored_init.npz"), **state_arrays(mirror))
    x, y = batches(seed=7, n=2)
    for step in (1, 2):
        sl = slice((step - 1) * GLOBAL_BATCH, step * GLOBAL_BATCH)
        data = tf.data.Dataset.from_tensor_slices((x[sl], y[sl])).batch(GLOBAL_BATCH)
        for tag, model in (("single", single), ("mirrored", mirror)):
            logs = model.fit(data, epochs=1, shuffle=False, verbose=0).history
            meta[f"{tag}_loss_{step}"] = logs["loss"][-1]
            np.savez(os.path.join(out, f"{tag}_{step}.npz"), **state_arrays(model))
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f)


def worker(out: str, steps: int = 3) -> None:
    import tensorflow as tf

    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    model = build(strategy)
    init = state_arrays(model)
    # This worker's own shard: other images on every worker (auto-sharding off, so nothing is dropped
    # or shared); each step's global batch is the union of the workers' local batches.
    x, y = batches(seed=100 + index, n=steps)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH).repeat().with_options(options)
    history = model.fit(data, epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0).history
    final = state_arrays(model)
    arrays = {**{f"init/{k}": v for k, v in init.items()}, **{f"final/{k}": v for k, v in final.items()}}
    np.savez(os.path.join(out, f"weights_{index}.npz"), **arrays)
    with open(os.path.join(out, f"meta_{index}.json"), "w") as f:
        meta = {"replicas": strategy.num_replicas_in_sync, "loss": history["loss"][-1], "data_sum": float(x.sum())}
        json.dump(meta, f)


if __name__ == "__main__":
    mode, out_dir = sys.argv[1], sys.argv[2]
    {"mirrored": mirrored, "worker": worker}[mode](out_dir)
