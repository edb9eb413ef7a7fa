"""``DATASETS``: every dataset name of ``--dataset`` and its loader.

Above the loaders' modules (``sources``, ``folder``, ``imagenet``) and below ``pipeline``, so no
data module imports one that imports it back (see ``base.py`` for the layering). A loader marked
``streams = True`` is handed the pipeline's arguments and returns its own bundle (``imagenet2012``);
the others return a :class:`~ffsd_tf.data.base.Source` that ``pipeline.load_dataset`` wraps (the
``folder`` Source's images are read from its prepared cache, not held in memory).
"""

from __future__ import annotations

from typing import Callable

from ffsd_tf.data import folder, imagenet, sources


DATASETS: dict[str, Callable] = {
    "cifar100": sources.load_cifar100,
    "cifar10": sources.load_cifar10,
    "fashion_mnist": sources.load_fashion_mnist,
    "synthetic": sources.load_synthetic,
    "imagenet2012": imagenet.load_imagenet2012,
    "npz": sources.load_generic_npz,
    "folder": folder.load_folder,
}
