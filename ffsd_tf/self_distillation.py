"""Self-distillation decoders (paper Sec. III-C, Fig. 4; the authors' ``SelfDistillationModel``).

A decoder has M-1 blocks ``ConvTranspose2d(k3, s2, p1, output_padding 1) - BN - ReLU``; block m
maps a feature map back to the shape of the previous stage (for CIFAR ResNets
64@8x8 -> 32@16x16 -> 16@32x32). Its channel list is read off the backbone's own feature shapes,
which reproduces both the authors' halving ``SelfDistillationModel`` (ResNet, WRN, ImageNet
ResNet) and their explicit-list ``DIYSelfDistillationModel`` (DenseNet 456-312-168, GoogLeNet
1024-832-480).

Outputs are ordered shallow to deep, ``[S^1, ..., S^{M-1}]``, matching the backbone's
``features[:-1]`` (the authors reverse their hook list to the same order).

Trained by Eq. (10) on its own network's maps (``training=True``); applied in inference mode
(``training=False``, BN running statistics) to produce targets: the diversity feature target
for students (Eq. 11) and the fused map F_f for the leader (Eq. 13).
"""

from __future__ import annotations

import keras
from keras import layers

from ffsd_tf.networks import layers as L


def build_sd_decoder(feature_shapes, name: str) -> keras.Model:
    """feature_shapes: the backbone's (H, W, C) per stage, shallow to deep (M entries)."""
    feature_shapes = [tuple(s) for s in feature_shapes]
    if len(feature_shapes) < 2:
        raise ValueError("self-distillation needs at least two feature stages")
    inputs = keras.Input(feature_shapes[-1], name="last_features")
    x = inputs
    outputs = []
    for block, (h, w, c) in enumerate(reversed(feature_shapes[:-1])):
        if (x.shape[1] * 2, x.shape[2] * 2) != (h, w):
            raise ValueError(f"decoder block {block} cannot map {tuple(x.shape[1:])} to {(h, w, c)}")
        x = L.conv_transpose_x2(x, c, name=f"block{block}_convT")
        x = L.batch_norm(f"block{block}_bn")(x)
        x = layers.ReLU(name=f"block{block}_relu")(x)
        outputs.append(x)
    return keras.Model(inputs, outputs[::-1], name=name)
