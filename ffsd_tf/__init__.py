"""ffsd-tf: online knowledge distillation by Feature Fusion and Self-Distillation, in Keras 3.

The Python API (README, "Use it from Python"; ``examples/python_api.py`` runs it)::

    from ffsd_tf import FFSD, export_model, load_dataset

    data = load_dataset("fashion_mnist", train_subset=5000)
    model = FFSD("resnet8", num_classes=data.num_classes, input_shape=data.image_shape)
    model.compile()                                   # the paper's optimizers, one per role
    model.fit(data.train_stream(), epochs=3, steps_per_epoch=data.steps_per_epoch)
    export_model(model, data, export_dir="runs/mine/export")

Names are imported on first use (``import ffsd_tf`` alone does not load TensorFlow, so the
TensorFlow-free tools such as ``ffsd_tf.report`` stay light).
"""

from __future__ import annotations

import importlib

# public name -> the module that defines it
_API = {
    "FFSD": "ffsd_tf.trainer",
    "FFSDConfig": "ffsd_tf.trainer",
    "LOSS_WEIGHTS": "ffsd_tf.trainer",
    "PAPER_LOSS_WEIGHTS": "ffsd_tf.trainer",
    "RECIPE_LOSS_WEIGHTS": "ffsd_tf.trainer",
    "RECIPE_OPTIONS": "ffsd_tf.trainer",
    "paper_optimizers": "ffsd_tf.optimizers",
    "from_keras": "ffsd_tf.networks.custom",
    "load_dataset": "ffsd_tf.data",
    "DataBundle": "ffsd_tf.data",
    "export_model": "ffsd_tf.export",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'ffsd_tf' has no attribute {name!r}")
    from ffsd_tf.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_API))
