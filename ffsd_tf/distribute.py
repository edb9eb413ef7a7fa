"""tf.distribute strategies and mixed precision for a run.

* ``default``: one device (GPU if there is one, else CPU); the only mode where XLA works.
* ``mirrored``: ``MirroredStrategy`` over every local GPU (or the devices given).
* ``multi_worker``: ``MultiWorkerMirroredStrategy`` configured from ``TF_CONFIG``.

The trainer scales every hand-written per-replica mean by ``1/num_replicas_in_sync`` and Keras
reduces the metrics across replicas. Only the chief writes checkpoints, logs and results; other
workers save into a scratch directory they delete (every worker must take part in a save).
"""

from __future__ import annotations

import json
import os

import keras
import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def make_strategy(name: str) -> tf.distribute.Strategy:
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--strategy=multi_worker needs TF_CONFIG (cluster and task) in the environment")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown strategy {name!r}; choose one of {STRATEGIES}")


def is_chief() -> bool:
    """True unless TF_CONFIG names this process a non-chief worker."""
    config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    task = config.get("task", {})
    cluster = config.get("cluster", {})
    kind, index = task.get("type"), task.get("index", 0)
    if kind is None or kind == "chief":
        return True
    if kind == "worker":
        return "chief" not in cluster and index == 0
    return False


def task_id() -> str:
    task = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}").get("task", {})
    return f"{task.get('type', 'local')}{task.get('index', 0)}"


def set_precision(policy: str) -> None:
    """Sets Keras' global dtype policy; call before building the model."""
    if policy not in PRECISIONS:
        raise ValueError(f"unknown precision {policy!r}; choose one of {PRECISIONS}")
    keras.mixed_precision.set_global_policy(policy)


def wrap_for_precision(optimizers: dict, policy: str) -> dict:
    """Dynamic loss scaling per role for float16 (bfloat16 has float32's range and needs none)."""
    if policy != "mixed_float16":
        return optimizers
    return {role: keras.optimizers.LossScaleOptimizer(opt, name=f"{opt.name}_scaled") for role, opt in optimizers.items()}
