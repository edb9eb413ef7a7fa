"""Backbone networks FFSD trains, one file per family; see ``registry`` for the contract."""

from ffsd_tf.networks import resnet_cifar, wrn_cifar  # noqa: F401  (registration side effects)
from ffsd_tf.networks.registry import UnknownNetworkError, available, build_network, register

__all__ = ["UnknownNetworkError", "available", "build_network", "register"]
