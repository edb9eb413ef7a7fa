"""Analytic forward FLOPs of Keras models (multiply-adds counted as 2 FLOPs).

Counts convolutions (regular, depthwise, transposed) and dense layers, which dominate CNN cost;
BatchNorm, activations and pooling are ignored (the same convention as the paper's Table VII).
Used by the benchmark to compare the FFSD step's measured cost with its FLOPs-ideal.
"""

from __future__ import annotations

import math

import keras


def _spatial(shape) -> int:
    return math.prod(int(d) for d in shape[1:-1])


def layer_flops(layer) -> int:
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        k = math.prod(layer.kernel_size)
        return 2 * _spatial(layer.output.shape) * k * int(layer.output.shape[-1])
    if isinstance(layer, keras.layers.Conv2DTranspose):
        k = math.prod(layer.kernel_size)
        cin = int(layer.input.shape[-1])
        return 2 * _spatial(layer.input.shape) * k * cin * layer.filters
    if isinstance(layer, keras.layers.Conv2D):
        k = math.prod(layer.kernel_size)
        cin = int(layer.input.shape[-1])
        return 2 * _spatial(layer.output.shape) * k * cin * layer.filters
    if isinstance(layer, keras.layers.Dense):
        return 2 * int(layer.input.shape[-1]) * layer.units
    return 0


def model_flops(model: keras.Model) -> int:
    """Forward FLOPs for one example."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += model_flops(layer)
        else:
            total += layer_flops(layer)
    return total


def ffsd_step_flops(ffsd) -> dict:
    """Per-example FLOPs of one FFSD training step, by component.

    Training a network costs ~3x its forward (forward + input and weight gradients). Decoders also
    run one extra inference forward each to produce targets.
    """
    parts = {
        "students": sum(model_flops(s) for s in ffsd.common_students),
        "leader": model_flops(ffsd.leader) if ffsd.leader is not None else 0,
        "trans_fusion": model_flops(ffsd.trans_fusion) if ffsd.trans_fusion is not None else 0,
        "fusion": model_flops(ffsd.fusion) if ffsd.fusion is not None else 0,
        "decoders": sum(model_flops(d) for d in ffsd.sd_decoders.values()),
    }
    train = 3 * sum(parts.values())
    return {"forward": parts, "train_step": train + parts["decoders"]}
