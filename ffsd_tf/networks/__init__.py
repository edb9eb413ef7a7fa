"""Backbone networks FFSD trains, one file per family; see ``registry`` for the contract."""

from ffsd_tf.networks import (  # noqa: F401  (registration side effects)
    densenet_cifar,
    googlenet_cifar,
    resnet_cifar,
    resnet_imagenet,
    vgg_cifar,
    wrn_cifar,
)
from ffsd_tf.networks.registry import UnknownNetworkError, available, build_network, register

__all__ = ["UnknownNetworkError", "available", "build_network", "register"]
