"""DenseNet-40-12 for CIFAR (Huang et al. 2017), as in the authors' ``models/densenet_cifar.py``.

``DenseNet(depth=40, growthRate=12, compressionRate=1)``: conv3x3(24, no bias) stem; three dense
blocks of 12 ``DenseBasicBlock`` s (BN-ReLU-conv3x3(12, no bias), concatenated to the block's
input) separated by two transitions (BN-ReLU-conv1x1(same width, no bias)-avgpool 2x2); a final
BN-ReLU; average pool; linear classifier. Widths 24 -> 168 | 168 -> 312 | 312 -> 456.

FFSD features (the authors' hooks ``dense1, dense2, relu``): the outputs of dense blocks 1 and 2
(before their transitions; concatenations that hold raw stem/transition outputs, so they can be
negative) and the final BN-ReLU output: 32x32x168, 16x16x312, 8x8x456 for a 32x32 input.
The authors' ``AvgPool2d(8)`` is a global average pool here (identical at 32x32; also valid for
the smaller inputs tests use). Init: the authors' conv rule, Linear the PyTorch default.
"""

from __future__ import annotations

import keras
from keras import layers

from ffsd_tf.networks import layers as L
from ffsd_tf.networks.registry import register


def dense_layer(x, growth: int, name: str):
    y = L.batch_norm(f"{name}_bn")(x)
    y = layers.ReLU(name=f"{name}_relu")(y)
    y = L.conv(y, growth, 3, name=f"{name}_conv")
    return layers.Concatenate(axis=-1, name=f"{name}_concat")([x, y])


def transition(x, out_channels: int, name: str):
    y = L.batch_norm(f"{name}_bn")(x)
    y = layers.ReLU(name=f"{name}_relu")(y)
    y = L.conv(y, out_channels, 1, name=f"{name}_conv")
    return layers.AveragePooling2D(2, name=f"{name}_pool")(y)


def cifar_densenet(depth: int, growth: int, compression: float = 1.0, *, num_classes: int, input_shape, name: str):
    if (depth - 4) % 3:
        raise ValueError(f"DenseNet depth must be 3n+4, got {depth}")
    n = (depth - 4) // 3
    inputs = keras.Input(input_shape, name="images")
    x = L.conv(inputs, 2 * growth, 3, name="stem_conv")
    features = []
    for stage in (1, 2, 3):
        for i in range(n):
            x = dense_layer(x, growth, name=f"dense{stage}_{i}")
        if stage < 3:
            features.append(x)
            x = transition(x, int(x.shape[-1] // compression), name=f"trans{stage}")
    x = L.batch_norm("final_bn")(x)
    x = layers.ReLU(name="final_relu")(x)
    features.append(x)
    pooled = layers.GlobalAveragePooling2D(name="avgpool")(x)
    logits = L.dense(pooled, num_classes, name="fc")
    return keras.Model(inputs, {"logits": logits, "features": features}, name=name)


register("densenet40_12")(lambda **kw: cifar_densenet(40, 12, **kw))
