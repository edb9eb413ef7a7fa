"""Wide ResNets WRN-16-2 and WRN-40-2 (Zagoruyko & Komodakis), as in ``models/wideresnet_cifar.py``.

conv3x3(16, bias) stem; three stages of pre-activation ``wide_basic`` blocks
(BN-ReLU-conv3x3(bias)-dropout-BN-ReLU-conv3x3(bias, stride on the second conv) + shortcut, a
biased 1x1 conv when the shape changes) at 16k/32k/64k channels; a final BN-ReLU; average pool;
linear classifier. FFSD features: the outputs of stage 1 and stage 2 (pre-activation residual
sums, which can be negative) and the final BN-ReLU output. The final BN uses PyTorch momentum 0.9
in the authors' code, which is Keras momentum 0.1.
"""

from __future__ import annotations

import keras
from keras import layers

from ffsd_tf.networks import layers as L
from ffsd_tf.networks.registry import register


def wide_basic(x, planes: int, stride: int, dropout: float, name: str):
    y = L.batch_norm(f"{name}_bn1")(x)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = L.conv(y, planes, 3, use_bias=True, name=f"{name}_conv1")
    if dropout > 0:
        y = layers.Dropout(dropout, name=f"{name}_dropout")(y)
    y = L.batch_norm(f"{name}_bn2")(y)
    y = layers.ReLU(name=f"{name}_relu2")(y)
    y = L.conv(y, planes, 3, stride=stride, use_bias=True, name=f"{name}_conv2")
    shortcut = x
    if stride != 1 or x.shape[-1] != planes:
        shortcut = L.conv(x, planes, 1, stride=stride, use_bias=True, name=f"{name}_shortcut")
    return layers.Add(name=f"{name}_add")([y, shortcut])


def wide_resnet(depth: int, widen: int, dropout: float = 0.0, *, num_classes: int, input_shape, name: str) -> keras.Model:
    if (depth - 4) % 6:
        raise ValueError(f"WRN depth must be 6n+4, got {depth}")
    blocks = (depth - 4) // 6
    inputs = keras.Input(input_shape, name="images")
    x = L.conv(inputs, 16, 3, use_bias=True, name="stem_conv")
    features = []
    for stage, (planes, stride) in enumerate([(16 * widen, 1), (32 * widen, 2), (64 * widen, 2)], start=1):
        for block in range(blocks):
            x = wide_basic(x, planes, stride if block == 0 else 1, dropout, name=f"layer{stage}_{block}")
        if stage < 3:
            features.append(x)
    x = L.batch_norm("final_bn", momentum=0.1)(x)
    x = layers.ReLU(name="final_relu")(x)
    features.append(x)
    pooled = layers.GlobalAveragePooling2D(name="avgpool")(x)
    logits = L.dense(pooled, num_classes, name="fc")
    return keras.Model(inputs, {"logits": logits, "features": features}, name=name)


register("wrn16_2")(lambda **kw: wide_resnet(16, 2, **kw))
register("wrn40_2")(lambda **kw: wide_resnet(40, 2, **kw))
