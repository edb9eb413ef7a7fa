"""Keras building blocks that reproduce PyTorch's layers bit-for-bit in shape and initialisation.

The authors' code (SJLeo/FFSD) is PyTorch. Four porting traps change results silently and are
handled here once, so that every network file stays a plain description of its architecture:

* Initialisation: convolutions ``N(0, sqrt(2 / (k*k*out_channels)))`` untruncated (He-normal,
  fan-out); depthwise convolutions use ``out_channels = C`` (Keras' own fan-out for a depthwise
  kernel is ``k*k*depth_multiplier``, sqrt(C) too large); ``nn.Linear``, conv biases and
  ``ConvTranspose2d`` keep PyTorch's default ``U(+-1/sqrt(fan_in))``.
* BatchNorm: PyTorch momentum 0.1 / eps 1e-5 is Keras momentum 0.9 / epsilon 1e-5, and torch's
  running variance averages the *unbiased* batch variance (x n/(n-1)) where Keras averages the
  biased one that both use to normalise (``TorchBatchNormalization``; found by the parity harness,
  ``benchmarks/parity``: 1e-4 relative per step in ResNet-20's 8x8 stage at batch 32).
* Stride-2 3x3 convs: PyTorch pads 1 on every side; Keras 'same' pads 0 before / 1 after on even
  inputs, shifting the grid by a pixel. We pad explicitly and convolve 'valid'.
* Transposed conv ``ConvTranspose2d(k3, s2, p1, output_padding=1)`` is the full output cropped
  ``[1:2H+1]``; Keras' 'same' takes ``[0:2H]``. We use 'valid' and crop the first row/column.
"""

from __future__ import annotations

import contextlib
import contextvars
import math

import keras
from keras import layers

BN_MOMENTUM = 0.9  # PyTorch momentum 0.1
BN_EPSILON = 1e-5
_SYNC_BN = contextvars.ContextVar("ffsd_sync_batchnorm", default=False)


@contextlib.contextmanager
def synchronized_batchnorm(enabled: bool = True):
    """Networks built inside this context use cross-replica (synchronized) BatchNorm."""
    token = _SYNC_BN.set(bool(enabled))
    try:
        yield
    finally:
        _SYNC_BN.reset(token)


def conv_init(kernel_size: int, out_channels: int) -> keras.initializers.Initializer:
    """The authors' conv init: N(0, sqrt(2 / (k*k*out_channels))), untruncated."""
    return keras.initializers.RandomNormal(stddev=math.sqrt(2.0 / (kernel_size * kernel_size * out_channels)))


def torch_uniform_init(fan_in: int) -> keras.initializers.Initializer:
    """PyTorch's default for Linear/conv bias/ConvTranspose: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-bound, bound)


@keras.saving.register_keras_serializable(package="ffsd_tf")
class TorchBatchNormalization(layers.BatchNormalization):
    """``nn.BatchNorm2d``: as Keras' layer, but the moving variance tracks the unbiased batch variance.

    Training normalises with the biased variance of the batch (both frameworks); torch's
    ``running_var`` is updated with ``var * n / (n - 1)``, n = the values per channel in the batch
    (across replicas when synchronized). Inference, masks and renorm are Keras' own code.
    """

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or mask is not None or self.renorm:
            return super().call(inputs, training=training, mask=mask)
        x = keras.ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        mean, variance = self._moments(x, None)
        n = keras.ops.cast(keras.ops.size(x) // keras.ops.shape(x)[self.axis], x.dtype)
        if self.synchronized:
            import tensorflow as tf

            n = n * tf.distribute.get_strategy().num_replicas_in_sync
        unbiased = variance * n / keras.ops.maximum(n - 1.0, 1.0)
        m = self.momentum
        self.moving_mean.assign(keras.ops.cast(self.moving_mean, x.dtype) * m + mean * (1.0 - m))
        self.moving_variance.assign(keras.ops.cast(self.moving_variance, x.dtype) * m + unbiased * (1.0 - m))
        gamma = keras.ops.cast(self.gamma, x.dtype) if self.scale else None
        beta = keras.ops.cast(self.beta, x.dtype) if self.center else None
        outputs = keras.ops.batch_normalization(x, mean=mean, variance=variance, axis=self.axis, offset=beta,
                                                scale=gamma, epsilon=self.epsilon)
        return keras.ops.cast(outputs, self.compute_dtype)


def batch_norm(name: str, momentum: float = BN_MOMENTUM) -> layers.BatchNormalization:
    return TorchBatchNormalization(momentum=momentum, epsilon=BN_EPSILON, synchronized=_SYNC_BN.get(), name=name)


def conv(x, filters: int, kernel_size: int, *, stride: int = 1, use_bias: bool = False, name: str):
    """``nn.Conv2d(in, filters, k, stride, padding=k//2)`` with the authors' initialisation."""
    in_channels = x.shape[-1]
    pad = kernel_size // 2
    if stride > 1 and pad > 0:
        x = layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"
    return layers.Conv2D(
        filters,
        kernel_size,
        strides=stride,
        padding=padding,
        use_bias=use_bias,
        kernel_initializer=conv_init(kernel_size, filters),
        bias_initializer=torch_uniform_init(in_channels * kernel_size * kernel_size),
        name=name,
    )(x)


def depthwise_conv(x, kernel_size: int = 3, *, name: str):
    """``nn.Conv2d(C, C, k, padding=k//2, groups=C, bias=False)``, std sqrt(2/(k*k*C))."""
    channels = x.shape[-1]
    return layers.DepthwiseConv2D(
        kernel_size,
        padding="same",
        use_bias=False,
        depthwise_initializer=conv_init(kernel_size, channels),
        name=name,
    )(x)


def dense(x, units: int, *, name: str):
    """``nn.Linear(in, units)`` with PyTorch's default initialisation."""
    init = torch_uniform_init(x.shape[-1])
    return layers.Dense(units, kernel_initializer=init, bias_initializer=init, name=name)(x)


def conv_transpose_x2(x, filters: int, *, name: str):
    """``nn.ConvTranspose2d(in, filters, 3, stride=2, padding=1, output_padding=1, bias=False)``.

    H x W -> 2H x 2W. PyTorch's default init uses fan_in = filters * 9 (its weight layout is
    (in, out, k, k)).
    """
    y = layers.Conv2DTranspose(
        filters,
        3,
        strides=2,
        padding="valid",
        use_bias=False,
        kernel_initializer=torch_uniform_init(filters * 9),
        name=name,
    )(x)
    return layers.Cropping2D(((1, 0), (1, 0)), name=f"{name}_crop")(y)


def with_keras_batchnorm(model: keras.Model) -> keras.Model:
    """A copy of ``model`` with Keras' own BatchNormalization in place of ``TorchBatchNormalization``.

    The two differ only in how training updates the moving variance, so the copy predicts
    identically; saved as ``.keras`` it loads with plain ``keras.models.load_model``, no import of
    ffsd_tf needed (the exported ``leader.keras``).
    """

    def clone(layer):
        if isinstance(layer, TorchBatchNormalization):
            return layers.BatchNormalization.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    plain = keras.models.clone_model(model, clone_function=clone)
    plain.set_weights(model.get_weights())
    return plain
