"""ImageNet ResNet-18/34 (He et al. 2016), torchvision-style, as in the authors' ``models/resnet_imagenet.py``.

Stem conv7x7/2 (padding 3, no bias)-BN-ReLU-maxpool 3x3/2 (padding 1); four stages of
post-activation BasicBlocks at 64/128/256/512 channels with strides 1/2/2/2 (stride on the first
conv, padded 1 on every side like PyTorch) and option-B shortcuts (conv1x1/stride + BN) where the
shape changes; global average pool; ``Linear(512, K)``. [2, 2, 2, 2] blocks = ResNet-18
(11,689,512 parameters at K = 1000, torchvision's count), [3, 4, 6, 3] = ResNet-34 (21,797,672).

FFSD features (the authors' hooks ``layer1..layer4``, so M = 4): the stage outputs, 56x56x64,
28x28x128, 14x14x256, 7x7x512 for a 224x224 input (each H/4, H/8, H/16, H/32 for an input of
side H divisible by 32).

Init: ``kaiming_normal_(mode='fan_out', nonlinearity='relu')`` for every conv, which is the same
N(0, sqrt(2/(k*k*out))) rule as the CIFAR networks; BN 1/0; no zero-init of the last BN
(``zero_init_residual=False``); the Linear keeps PyTorch's default U(+-1/sqrt(512)).
Padding: the strided convs use ``layers.conv`` (explicit symmetric zero padding), the max pool
``googlenet_cifar.torch_max_pool`` (PyTorch's -inf padding, exactly).
"""

from __future__ import annotations

import keras
from keras import layers

from ffsd_tf.networks import layers as L
from ffsd_tf.networks.googlenet_cifar import torch_max_pool
from ffsd_tf.networks.registry import register
from ffsd_tf.networks.resnet_cifar import basic_block


def imagenet_resnet(blocks_per_stage, *, num_classes: int, input_shape, name: str) -> keras.Model:
    inputs = keras.Input(input_shape, name="images")
    x = L.conv(inputs, 64, 7, stride=2, name="stem_conv")
    x = L.batch_norm("stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    x = torch_max_pool(x, name="stem_maxpool")
    features = []
    for stage, (planes, stride, blocks) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2), blocks_per_stage), 1):
        for block in range(blocks):
            x = basic_block(x, planes, stride if block == 0 else 1, name=f"layer{stage}_{block}")
        features.append(x)
    pooled = layers.GlobalAveragePooling2D(name="avgpool")(x)
    logits = L.dense(pooled, num_classes, name="fc")
    return keras.Model(inputs, {"logits": logits, "features": features}, name=name)


register("resnet18")(lambda **kw: imagenet_resnet((2, 2, 2, 2), **kw))
register("resnet34")(lambda **kw: imagenet_resnet((3, 4, 6, 3), **kw))
