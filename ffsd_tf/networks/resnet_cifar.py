"""CIFAR ResNet-20/32/56/110 (He et al. 2016), as in the authors' ``models/resnet_cifar.py``.

Stem conv3x3(16)-BN-ReLU; three stages of post-activation BasicBlocks at 16/32/64 channels with
strides 1/2/2 (stride on the first conv); shortcut = conv1x1+BN when the shape changes ("option
B"); global average pool; linear classifier. FFSD features: the three stage outputs
(32x32x16, 16x16x32, 8x8x64 for a 32x32 input), so M = 3. ResNet-110 is not in the authors' code;
it follows the same rule with 18 blocks per stage. ResNet-8 (one block per stage, not in the paper)
is registered for smoke runs, tests and the CPU quickstart.
"""

from __future__ import annotations

import keras
from keras import layers

from ffsd_tf.networks import layers as L
from ffsd_tf.networks.registry import register


def basic_block(x, planes: int, stride: int, name: str):
    shortcut = x
    y = L.conv(x, planes, 3, stride=stride, name=f"{name}_conv1")
    y = L.batch_norm(f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = L.conv(y, planes, 3, name=f"{name}_conv2")
    y = L.batch_norm(f"{name}_bn2")(y)
    if stride != 1 or x.shape[-1] != planes:
        shortcut = L.conv(x, planes, 1, stride=stride, name=f"{name}_down_conv")
        shortcut = L.batch_norm(f"{name}_down_bn")(shortcut)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def cifar_resnet(blocks_per_stage: int, *, num_classes: int, input_shape, name: str) -> keras.Model:
    inputs = keras.Input(input_shape, name="images")
    x = L.conv(inputs, 16, 3, name="stem_conv")
    x = L.batch_norm("stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    features = []
    for stage, (planes, stride) in enumerate([(16, 1), (32, 2), (64, 2)], start=1):
        for block in range(blocks_per_stage):
            x = basic_block(x, planes, stride if block == 0 else 1, name=f"layer{stage}_{block}")
        features.append(x)
    pooled = layers.GlobalAveragePooling2D(name="avgpool")(x)
    logits = L.dense(pooled, num_classes, name="fc")
    return keras.Model(inputs, {"logits": logits, "features": features}, name=name)


for _depth in (8, 20, 32, 56, 110):
    register(f"resnet{_depth}")(
        lambda *, _n=(_depth - 2) // 6, **kw: cifar_resnet(_n, **kw)
    )
