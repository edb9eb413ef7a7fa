"""GoogLeNet (Inception v1) for CIFAR, as in the authors' ``models/googlenet_cifar.py``.

Stem conv3x3(192, bias)-BN-ReLU at full resolution; Inception blocks a3 b3 | maxpool | a4 b4 c4 d4
e4 | maxpool | a5 b5; average pool; linear classifier. An Inception block concatenates four
branches, every conv biased and followed by BN-ReLU: 1x1; 1x1 -> 3x3; 1x1 -> 3x3 -> 3x3 (the
"5x5" branch); maxpool 3x3 (stride 1) -> 1x1.

FFSD features (the authors' hooks ``inception_b3, inception_e4, inception_b5``): 32x32x480,
16x16x832, 8x8x1024 for a 32x32 input. The authors' ``AvgPool2d(8, stride=1)`` is a global
average pool here (identical at 32x32). Init: the authors' conv rule (biases and Linear keep
PyTorch's defaults).

``MaxPool2d(3, stride=2, padding=1)`` pads with -inf in PyTorch; Keras' 'same' pads 0 before /
1 after on even inputs, a one-pixel shift. :func:`torch_max_pool` computes PyTorch's result
exactly with two standard layers: a stride-1 'same' 3x3 max pool (TF ignores the padded
positions, i.e. -inf padding) followed by taking every second row and column from the first
(a 1x1 max pool with stride 2). That selects exactly PyTorch's windows ``[2i-1, 2i+1]`` for any
input size, and unlike an explicit -inf constant it is safe for TFLite int8 calibration.
"""

from __future__ import annotations

import keras
from keras import layers

from ffsd_tf.networks import layers as L
from ffsd_tf.networks.registry import register

# (n1x1, n3x3red, n3x3, n5x5red1, n5x5red2, n5x5, pool_planes), the authors' defaults (layer_cfg=None).
INCEPTION_CFG = {
    "a3": (64, 96, 128, 16, 32, 32, 32),
    "b3": (128, 128, 192, 32, 96, 96, 64),
    "a4": (192, 96, 208, 16, 48, 48, 64),
    "b4": (160, 112, 224, 24, 64, 64, 64),
    "c4": (128, 128, 256, 24, 64, 64, 64),
    "d4": (112, 144, 288, 32, 64, 64, 64),
    "e4": (256, 160, 320, 32, 128, 128, 128),
    "a5": (256, 160, 320, 32, 128, 128, 128),
    "b5": (384, 192, 384, 48, 128, 128, 128),
}


def torch_max_pool(x, *, name: str):
    """``nn.MaxPool2d(3, stride=2, padding=1)`` exactly (see the module docstring)."""
    x = layers.MaxPooling2D(3, strides=1, padding="same", name=f"{name}_s1")(x)
    return layers.MaxPooling2D(1, strides=2, padding="valid", name=f"{name}_subsample")(x)


def conv_bn_relu(x, filters: int, kernel_size: int, name: str):
    x = L.conv(x, filters, kernel_size, use_bias=True, name=f"{name}_conv")
    x = L.batch_norm(f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def inception(x, cfg, name: str):
    n1x1, n3x3red, n3x3, n5x5red1, n5x5red2, n5x5, pool_planes = cfg
    b1 = conv_bn_relu(x, n1x1, 1, f"{name}_b1")
    b2 = conv_bn_relu(x, n3x3red, 1, f"{name}_b2a")
    b2 = conv_bn_relu(b2, n3x3, 3, f"{name}_b2b")
    b3 = conv_bn_relu(x, n5x5red1, 1, f"{name}_b3a")
    b3 = conv_bn_relu(b3, n5x5red2, 3, f"{name}_b3b")
    b3 = conv_bn_relu(b3, n5x5, 3, f"{name}_b3c")
    b4 = layers.MaxPooling2D(3, strides=1, padding="same", name=f"{name}_b4_pool")(x)
    b4 = conv_bn_relu(b4, pool_planes, 1, f"{name}_b4")
    return layers.Concatenate(axis=-1, name=f"{name}_out")([b1, b2, b3, b4])


def cifar_googlenet(*, num_classes: int, input_shape, name: str) -> keras.Model:
    inputs = keras.Input(input_shape, name="images")
    x = conv_bn_relu(inputs, 192, 3, "stem")
    features = []
    for block in ("a3", "b3"):
        x = inception(x, INCEPTION_CFG[block], f"inception_{block}")
    features.append(x)
    x = torch_max_pool(x, name="maxpool1")
    for block in ("a4", "b4", "c4", "d4", "e4"):
        x = inception(x, INCEPTION_CFG[block], f"inception_{block}")
    features.append(x)
    x = torch_max_pool(x, name="maxpool2")
    for block in ("a5", "b5"):
        x = inception(x, INCEPTION_CFG[block], f"inception_{block}")
    features.append(x)
    pooled = layers.GlobalAveragePooling2D(name="avgpool")(x)
    logits = L.dense(pooled, num_classes, name="fc")
    return keras.Model(inputs, {"logits": logits, "features": features}, name=name)


register("googlenet")(cifar_googlenet)
