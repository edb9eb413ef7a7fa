"""VGG-16 with BatchNorm for CIFAR (Simonyan & Zisserman 2015; Ioffe & Szegedy 2015).

Not in the authors' code: the paper uses it only in its EnD2 comparison. We follow the most widely
used CIFAR port, ``kuangliu/pytorch-cifar`` ``models/vgg.py`` ('VGG16'): 13 conv3x3 (padding 1,
*biased*) - BN - ReLU layers in five blocks of 64,64 | 128,128 | 256,256,256 | 512,512,512 |
512,512,512 channels, a 2x2 max pool after each block, then a single ``Linear(512, K)`` on the
pooled features (that port's ``AvgPool2d(1)`` is a no-op on the 1x1x512 map a 32x32 input leaves;
we use a global average pool, identical there and defined for other input sizes). No dropout and
no 4096-wide classifier (those belong to the ImageNet VGG). Parameters for K classes:
``sum(9*c_in*c_out + c_out + 2*c_out) + 512*K + K`` = 14,774,436 for K = 100.

Init: the authors' conv rule used for every other backbone here (N(0, sqrt(2/(9*c_out))),
biases and Linear PyTorch's defaults), not the port's PyTorch-default conv init; with BN after
every conv this only changes the starting point.

FFSD features: the outputs (after the last BN-ReLU, before pooling) of blocks 3, 4 and 5:
8x8x256, 4x4x512 and 2x2x512 for a 32x32 input. Each is twice the size of the next, so the
self-distillation decoders fit, and F^L is the last conv layer's map, as the paper requires.
"""

from __future__ import annotations

import keras
from keras import layers

from ffsd_tf.networks import layers as L
from ffsd_tf.networks.registry import register

VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
FEATURE_BLOCKS = (3, 4, 5)  # 1-based blocks whose (pre-pool) outputs are F^1..F^3


def cifar_vgg(blocks, *, num_classes: int, input_shape, name: str) -> keras.Model:
    inputs = keras.Input(input_shape, name="images")
    x = inputs
    features = []
    for b, widths in enumerate(blocks, start=1):
        for i, width in enumerate(widths, start=1):
            x = L.conv(x, width, 3, use_bias=True, name=f"block{b}_conv{i}")
            x = L.batch_norm(f"block{b}_bn{i}")(x)
            x = layers.ReLU(name=f"block{b}_relu{i}")(x)
        if b in FEATURE_BLOCKS:
            features.append(x)
        x = layers.MaxPooling2D(2, name=f"block{b}_pool")(x)
    pooled = layers.GlobalAveragePooling2D(name="avgpool")(x)
    logits = L.dense(pooled, num_classes, name="fc")
    return keras.Model(inputs, {"logits": logits, "features": features}, name=name)


register("vgg16")(lambda **kw: cifar_vgg(VGG16_BLOCKS, **kw))
