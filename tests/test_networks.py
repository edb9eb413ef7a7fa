"""Networks: parameter counts against the PyTorch originals, feature shapes, PyTorch-exact layers."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from ffsd_tf.fusion import build_fusion_module, build_trans_fusion
from ffsd_tf.networks import UnknownNetworkError, available, build_network
from ffsd_tf.networks import layers as L
from ffsd_tf.self_distillation import build_sd_decoder


def trainable_count(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


# Counted by the design team on the authors' PyTorch modules (official-code-detailed.md s.2), 100 classes;
# the ImageNet ResNets at 1000 classes (torchvision's published counts, see COUNT_CLASSES).
PYTORCH_COUNTS = {
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet56": 861_620,
    "wrn16_2": 704_420,
    "wrn40_2": 2_258_084,
    "densenet40_12": 1_100_428,
    "googlenet": 6_258_500,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
}
COUNT_CLASSES = {"resnet18": 1000, "resnet34": 1000}  # every other count is for 100 classes
# Networks checked against an independent formula instead (not in the authors' code).
FORMULA_COUNTED = {"resnet8", "resnet110", "vgg16"}


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


def vgg16_bn_formula(k=100):
    """CIFAR VGG-16-BN (kuangliu/pytorch-cifar 'VGG16'): 13 biased conv3x3 + BN, one Linear(512, k)."""
    widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    total, c_in = 0, 3
    for c_out in widths:
        total += 9 * c_in * c_out + c_out + 2 * c_out  # kernel, bias, BN gamma + beta
        c_in = c_out
    return total + 512 * k + k


def imagenet_resnet_formula(blocks, k=1000):
    """torchvision ResNet with BasicBlocks: 7x7 stem + BN, option-B shortcuts, Linear(512, k)."""
    total = 3 * 49 * 64 + 2 * 64
    inplanes = 64
    for planes, n in zip((64, 128, 256, 512), blocks):
        for b in range(n):
            total += inplanes * 9 * planes + 2 * planes + planes * 9 * planes + 2 * planes
            if inplanes != planes:
                total += inplanes * planes + 2 * planes
            inplanes = planes
    return total + 512 * k + k


@pytest.mark.parametrize("name", sorted(PYTORCH_COUNTS))
def test_parameter_counts_match_pytorch(name):
    k = COUNT_CLASSES.get(name, 100)
    assert trainable_count(build_network(name, num_classes=k)) == PYTORCH_COUNTS[name]


def test_vgg16_count_matches_formula():
    assert vgg16_bn_formula(100) == 14_774_436 and vgg16_bn_formula(10) == 14_728_266
    for k in (10, 100):
        assert trainable_count(build_network("vgg16", num_classes=k)) == vgg16_bn_formula(k)


def test_imagenet_resnet_formula_agrees_with_torchvision():
    assert imagenet_resnet_formula((2, 2, 2, 2)) == PYTORCH_COUNTS["resnet18"]
    assert imagenet_resnet_formula((3, 4, 6, 3)) == PYTORCH_COUNTS["resnet34"]


def test_leader_extra_parameters_match_pytorch():
    """Leader minus student = sigma (TransFusionModule), n = 2: DenseNet 1,523,140, GoogLeNet 8,371,012."""
    assert PYTORCH_COUNTS["densenet40_12"] + trainable_count(build_trans_fusion((8, 8, 456), 2)) == 1_523_140
    assert PYTORCH_COUNTS["googlenet"] + trainable_count(build_trans_fusion((8, 8, 1024), 2)) == 8_371_012


@pytest.mark.parametrize("depth", [8, 20, 32, 56, 110])
def test_resnet_counts_match_formula(depth):
    assert trainable_count(build_network(f"resnet{depth}", num_classes=100)) == resnet_formula((depth - 2) // 6)


def test_every_registered_network_has_a_count_test():
    assert set(available()) == set(PYTORCH_COUNTS) | FORMULA_COUNTED


@pytest.mark.parametrize(
    "name,shapes",
    [
        ("resnet32", [(32, 32, 16), (16, 16, 32), (8, 8, 64)]),
        ("wrn16_2", [(32, 32, 32), (16, 16, 64), (8, 8, 128)]),
        ("densenet40_12", [(32, 32, 168), (16, 16, 312), (8, 8, 456)]),
        ("googlenet", [(32, 32, 480), (16, 16, 832), (8, 8, 1024)]),
        ("vgg16", [(8, 8, 256), (4, 4, 512), (2, 2, 512)]),
    ],
)
def test_feature_shapes(name, shapes):
    model = build_network(name, num_classes=10)
    out = model(np.zeros((2, 32, 32, 3), np.float32), training=False)
    assert [tuple(f.shape[1:]) for f in out["features"]] == shapes
    assert tuple(out["logits"].shape) == (2, 10)


@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
def test_imagenet_feature_shapes_at_224(name):
    model = build_network(name, num_classes=1000, input_shape=(224, 224, 3))
    out = model(np.zeros((1, 224, 224, 3), np.float32), training=False)
    assert [tuple(f.shape[1:]) for f in out["features"]] == [(56, 56, 64), (28, 28, 128), (14, 14, 256), (7, 7, 512)]
    assert tuple(out["logits"].shape) == (1, 1000)


# The cohort fits every new backbone (sigma, fusion, decoders built from its feature shapes) at a
# small input that keeps each feature map at least 2x2 (the diversity threshold needs HW >= 3).
COHORT_INPUTS = {"densenet40_12": 16, "googlenet": 16, "vgg16": 32, "resnet18": 64, "resnet34": 64}


@pytest.mark.parametrize("name", sorted(COHORT_INPUTS))
def test_ffsd_cohort_builds_and_computes_finite_losses(name, rng):
    from ffsd_tf.trainer import FFSD, FFSDConfig

    size = COHORT_INPUTS[name]
    model = FFSD(FFSDConfig(model=name, num_classes=10, input_shape=(size, size, 3), num_students=2))
    model.set_epoch(10)
    assert set(model.sd_decoders) == {"student2", "leader"}  # student 1 needs none (official code)
    images = tf.constant(rng.normal(size=(2, size, size, 3)).astype(np.float32))
    labels = tf.constant([1, 7], tf.int32)
    per_role, terms, logits = model.compute_losses(images, labels, training=True)
    assert set(per_role) >= {"students", "leader", "fusion", "decoders"}
    for key, value in {**per_role, **terms}.items():
        assert np.isfinite(float(value)), key
    assert {"student2/diversity", "student2/sd_diversity", "leader/sd", "sd_leader/loss"} <= set(terms)
    assert all(tuple(z.shape) == (2, 10) for z in logits.values())


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


def _np_max_pool_torch(x, k, stride, pad):
    """NumPy nn.MaxPool2d(k, stride, pad) on NHWC: pad with -inf, then take 'valid' windows."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-np.inf)
    ho = (x.shape[1] - k) // stride + 1
    wo = (x.shape[2] - k) // stride + 1
    out = np.empty((x.shape[0], ho, wo, x.shape[3]), x.dtype)
    for i in range(ho):
        for j in range(wo):
            out[:, i, j, :] = x[:, i * stride : i * stride + k, j * stride : j * stride + k, :].max(axis=(1, 2))
    return out


@pytest.mark.parametrize("size", [8, 7, 14])
def test_strided_max_pool_pads_like_pytorch(rng, size):
    """MaxPool2d(3, s2, p1) (GoogLeNet, ImageNet stem) == -inf padding + 'valid', on even and odd sizes."""
    import keras

    from ffsd_tf.networks.googlenet_cifar import torch_max_pool

    inp = keras.Input((size, size, 3))
    model = keras.Model(inp, torch_max_pool(inp, name="p"))
    x = rng.normal(size=(2, size, size, 3)).astype(np.float32)  # negative values: zero padding would differ
    np.testing.assert_array_equal(model(x).numpy(), _np_max_pool_torch(x, 3, 2, 1))


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


def test_imagenet_stem_follows_kaiming_fan_out():
    model = build_network("resnet18", num_classes=1000, input_shape=(64, 64, 3))
    stem = model.get_layer("stem_conv").kernel.numpy()  # 7x7x3x64: kaiming_normal_(fan_out) std sqrt(2/(49*64))
    assert stem.shape == (7, 7, 3, 64) and abs(stem.std() - np.sqrt(2 / (49 * 64))) / np.sqrt(2 / (49 * 64)) < 0.05
    fc = model.get_layer("fc").kernel.numpy()  # torch Linear default: U(+-1/sqrt(512))
    assert np.abs(fc).max() <= 1 / np.sqrt(512)


# ---------------------------------------------------------------------------------------------
# BatchNorm: torch's running variance (found by benchmarks/parity)


def test_batchnorm_running_variance_is_torchs_unbiased_one(rng):
    """``running_var = 0.9 * running_var + 0.1 * var * n / (n - 1)``; normalisation by the biased var."""
    x = rng.normal(2.0, 3.0, (4, 3, 3, 5)).astype(np.float32)  # n = 4 * 3 * 3 = 36 values per channel
    bn = L.batch_norm("bn")
    y = bn(tf.constant(x), training=True).numpy()
    flat = x.reshape(-1, 5)
    np.testing.assert_allclose(bn.moving_mean.numpy(), 0.1 * flat.mean(0), rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), 0.9 + 0.1 * flat.var(0, ddof=1), rtol=1e-5)
    np.testing.assert_allclose(y, (x - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5), atol=1e-4)
    y_eval = bn(tf.constant(x), training=False).numpy()  # inference: the moving statistics, untouched
    np.testing.assert_allclose(y_eval, (x - bn.moving_mean.numpy()) / np.sqrt(bn.moving_variance.numpy() + 1e-5),
                               atol=1e-4)


def test_every_network_uses_the_torch_batchnorm():
    for name in ("resnet20", "wrn16_2"):
        model = build_network(name, num_classes=10, input_shape=(32, 32, 3))
        bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
        assert bns and all(isinstance(layer, L.TorchBatchNormalization) for layer in bns)
