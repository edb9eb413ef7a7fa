"""Feature fusion (paper Sec. III-B, Fig. 3) and the leader's decoder sigma of Eq. (5).

``build_fusion_module``: the authors' ``FusionModule``. Input F_e, the channel-wise concatenation
of the common students' last-layer maps (student 1 first, stop-gradiented by the trainer);
depthwise 3x3 conv - BN - ReLU - 1x1 conv (nC -> C) - BN - ReLU gives the fused map F_f; average
pool and a linear layer give the fusion classifier's logits z_f (trained by Eq. 4).

``build_trans_fusion``: the authors' ``TransFusionModule`` (the paper's sigma in Eq. 5), part of
the *leader* during training only: depthwise 3x3 - BN - ReLU - 1x1 conv (C -> nC) - BN - ReLU, so
that sigma(F_0^L) can be compared with F_e. It is never exported.
"""

from __future__ import annotations

import keras
from keras import layers

from ffsd_tf.networks import layers as L


def build_fusion_module(feature_shape, num_students: int, num_classes: int, name: str = "fusion") -> keras.Model:
    """feature_shape = (H, W, C) of one student's F^L. Outputs {"fused": F_f, "logits": z_f}."""
    h, w, c = feature_shape
    inputs = keras.Input((h, w, num_students * c), name="concatenated_features")
    x = L.depthwise_conv(inputs, name="dw_conv")
    x = L.batch_norm("dw_bn")(x)
    x = layers.ReLU(name="dw_relu")(x)
    x = L.conv(x, c, 1, name="pw_conv")
    x = L.batch_norm("pw_bn")(x)
    fused = layers.ReLU(name="fused")(x)
    pooled = layers.GlobalAveragePooling2D(name="avgpool")(fused)
    logits = L.dense(pooled, num_classes, name="fc")
    return keras.Model(inputs, {"fused": fused, "logits": logits}, name=name)


def build_trans_fusion(feature_shape, num_students: int, name: str = "trans_fusion") -> keras.Model:
    """sigma of Eq. (5): maps the leader's F_0^L (H, W, C) to (H, W, n*C)."""
    h, w, c = feature_shape
    inputs = keras.Input((h, w, c), name="leader_features")
    x = L.depthwise_conv(inputs, name="dw_conv")
    x = L.batch_norm("dw_bn")(x)
    x = layers.ReLU(name="dw_relu")(x)
    x = L.conv(x, num_students * c, 1, name="pw_conv")
    x = L.batch_norm("pw_bn")(x)
    outputs = layers.ReLU(name="sigma")(x)
    return keras.Model(inputs, outputs, name=name)
