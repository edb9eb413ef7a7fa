"""Networks: parameter counts against the PyTorch originals, feature shapes, PyTorch-exact layers."""

import numpy as np
import pytest
import tensorflow as tf

from ffsd_tf.fusion import build_fusion_module, build_trans_fusion
from ffsd_tf.networks import UnknownNetworkError, available, build_network
from ffsd_tf.networks import layers as L
from ffsd_tf.self_distillation import build_sd_decoder


def trainable_count(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


# Counted by the design team on the authors' PyTorch modules (official-code-detailed.md s.2), 100 classes.
PYTORCH_COUNTS = {
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet56": 861_620,
    "wrn16_2": 704_420,
    "wrn40_2": 2_258_084,
}


def resnet_formula(blocks, k=100):
    """Independent count for a CIFAR ResNet (option-B shortcuts, BN gamma+beta, biased FC)."""
    total = 3 * 9 * 16 + 2 * 16  # stem conv + BN
    inplanes = 16
    for planes in (16, 32, 64):
        for b in range(blocks):
            total += inplanes * 9 * planes + 2 * planes + planes * 9 * planes + 2 * planes
            if inplanes != planes:
                total += inplanes * planes + 2 * planes
            inplanes = planes
    return total + 64 * k + k


@pytest.mark.parametrize("name", sorted(PYTORCH_COUNTS))
def test_parameter_counts_match_pytorch(name):
    assert trainable_count(build_network(name, num_classes=100)) == PYTORCH_COUNTS[name]


@pytest.mark.parametrize("depth", [8, 20, 32, 56, 110])
def test_resnet_counts_match_formula(depth):
    assert trainable_count(build_network(f"resnet{depth}", num_classes=100)) == resnet_formula((depth - 2) // 6)


def test_every_registered_network_has_a_count_test():
    assert set(available()) == set(PYTORCH_COUNTS) | {"resnet8", "resnet110"}


@pytest.mark.parametrize(
    "name,shapes",
    [
        ("resnet32", [(32, 32, 16), (16, 16, 32), (8, 8, 64)]),
        ("wrn16_2", [(32, 32, 32), (16, 16, 64), (8, 8, 128)]),
    ],
)
def test_feature_shapes(name, shapes):
    model = build_network(name, num_classes=10)
    out = model(np.zeros((2, 32, 32, 3), np.float32), training=False)
    assert [tuple(f.shape[1:]) for f in out["features"]] == shapes
    assert tuple(out["logits"].shape) == (2, 10)


def test_fusion_sigma_and_decoder_counts_match_pytorch():
    # ResNet-32, n = 2, 100 classes: FusionModule 16,228; TransFusionModule 9,152 (leader minus student);
    # SelfDistillationModel(64, 2) 23,136; WRN-x-2's SelfDistillationModel(128, 2) 92,352.
    assert trainable_count(build_fusion_module((8, 8, 64), 2, 100)) == 16_228
    assert trainable_count(build_trans_fusion((8, 8, 64), 2)) == 9_152
    assert trainable_count(build_sd_decoder([(32, 32, 16), (16, 16, 32), (8, 8, 64)], "sd")) == 23_136
    assert trainable_count(build_sd_decoder([(32, 32, 32), (16, 16, 64), (8, 8, 128)], "sd")) == 92_352


def test_unknown_network_is_a_clear_error():
    with pytest.raises(UnknownNetworkError, match="unknown model 'resnet33'.*resnet32"):
        build_network("resnet33", num_classes=10)


def test_batchnorm_is_pytorch_equivalent():
    bns = [layer for layer in build_network("resnet20", num_classes=10).layers if "bn" in layer.name]
    assert bns and all(b.momentum == 0.9 and b.epsilon == 1e-5 for b in bns)


def _np_conv2d_torch(x, w, stride, pad):
    """NumPy torch.nn.functional.conv2d on NHWC input and HWIO kernel, symmetric zero padding."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    k = w.shape[0]
    ho = (x.shape[1] - k) // stride + 1
    wo = (x.shape[2] - k) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, w.shape[3]))
    for i in range(ho):
        for j in range(wo):
            patch = x[:, i * stride : i * stride + k, j * stride : j * stride + k, :]
            out[:, i, j, :] = np.tensordot(patch, w, axes=([1, 2, 3], [0, 1, 2]))
    return out


def test_strided_conv_pads_like_pytorch(rng):
    """A stride-2 3x3 conv samples the same grid as torch's padding=1 (Keras 'same' does not)."""
    import keras

    inp = keras.Input((8, 8, 3))
    model = keras.Model(inp, L.conv(inp, 4, 3, stride=2, name="c"))
    x = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
    w = model.get_layer("c").kernel.numpy()
    np.testing.assert_allclose(model(x).numpy(), _np_conv2d_torch(x, w, 2, 1), rtol=1e-4, atol=1e-5)


def test_transposed_conv_matches_pytorch_crop(rng):
    """ConvTranspose2d(k3, s2, p1, output_padding=1) == the full transposed conv cropped [1:2H+1]."""
    import keras

    inp = keras.Input((4, 4, 3))
    model = keras.Model(inp, L.conv_transpose_x2(inp, 2, name="t"))
    x = rng.normal(size=(1, 4, 4, 3)).astype(np.float32)
    w = model.get_layer("t").kernel.numpy()  # (kh, kw, out, in)
    full = np.zeros((1, 9, 9, 2))
    for i in range(4):
        for j in range(4):
            full[0, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3, :] += np.einsum("c,hwoc->hwo", x[0, i, j], w)
    np.testing.assert_allclose(model(x).numpy(), full[:, 1:9, 1:9, :], rtol=1e-4, atol=1e-5)


def test_init_follows_the_authors_rule():
    model = build_network("resnet56", num_classes=100)
    kernel = model.get_layer("layer3_0_conv2").kernel.numpy()  # 3x3, 64 out: std sqrt(2/(9*64))
    assert abs(kernel.std() - np.sqrt(2 / (9 * 64))) / np.sqrt(2 / (9 * 64)) < 0.03
    fc = model.get_layer("fc").kernel.numpy()  # torch Linear default: U(+-1/sqrt(64))
    assert np.abs(fc).max() <= 1 / 8 and np.abs(fc).max() > 0.9 / 8
    dw = build_fusion_module((8, 8, 64), 2, 100).get_layer("dw_conv").kernel.numpy()
    assert abs(dw.std() - np.sqrt(2 / (9 * 128))) / np.sqrt(2 / (9 * 128)) < 0.05
