"""Data input of ffsd-tf: datasets, augmentation, normalisation and deterministic train streams.

::

    from ffsd_tf.data import load_dataset
    bundle = load_dataset("cifar100", data_dir=..., batch_size=128, seed=0)
    model.fit(bundle.train_stream(initial_epoch), steps_per_epoch=bundle.steps_per_epoch,
              initial_epoch=initial_epoch, validation_data=bundle.test_dataset(), ...)

* ``base.py``: ``Source``, ``channel_stats``, the partial-batch rule: what every data module shares.
* ``sources.py``: one loader per in-memory dataset (CIFAR-100/10 via tfds or a local .npz,
  Fashion-MNIST from IDX files, your own ``.npz``, a synthetic task).
* ``folder.py``: ``folder``, your own images in one subfolder per class, prepared once into a
  cache (``cache.py``) and streamed from it.
* ``registry.py``: the ``DATASETS`` registry (name -> loader).
* ``pipeline.py``: ``load_dataset`` and ``DataBundle`` (subsets, resizing, the paper's
  augmentation, normalisation, per-epoch deterministic shuffling).
* ``idx.py``: a strict IDX file reader, and ``DataError``.
"""

from ffsd_tf.data.idx import DataError, read_idx, write_idx
from ffsd_tf.data.pipeline import DataBundle, load_dataset
from ffsd_tf.data.base import Source
from ffsd_tf.data.registry import DATASETS

__all__ = ["DATASETS", "DataBundle", "DataError", "Source", "load_dataset", "read_idx", "write_idx"]
