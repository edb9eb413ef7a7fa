"""The pieces every data module shares, below all of them: :class:`Source` (a dataset's arrays and
metadata), ``channel_stats``, ``error_summary`` and the partial-batch rule (``batches_per_epoch``).

Layering of ``ffsd_tf.data`` (a module imports only modules above it in this list, never one that
imports it back): ``idx`` (DataError) and ``images`` (decode rules) -> ``base`` -> ``sources``
(the in-memory loaders), ``cache`` (the prepared folder cache) -> ``folder``, ``imagenet`` ->
``registry`` (``DATASETS``) -> ``pipeline`` (``load_dataset``, the bundles).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ffsd_tf.data.idx import DataError

PARTIAL_BATCH_POLICIES = ("drop_small", "keep", "drop")
DEFAULT_PARTIAL_BATCH = "drop_small"


def batches_per_epoch(train_size: int, batch_size: int, partial_batch: str = DEFAULT_PARTIAL_BATCH) -> int:
    """Training steps per epoch under a ``partial_batch`` policy (see the module docstring).

    A training set smaller than one batch is always one (partial) batch, never zero.
    """
    if partial_batch not in PARTIAL_BATCH_POLICIES:
        raise DataError(f"partial_batch must be one of {', '.join(PARTIAL_BATCH_POLICIES)}, got {partial_batch!r}")
    full, remainder = divmod(int(train_size), int(batch_size))
    keep = remainder > 0 and (
        full == 0 or partial_batch == "keep" or (partial_batch == "drop_small" and 2 * remainder >= batch_size)
    )
    return full + int(keep)


@dataclasses.dataclass(eq=False)
class Source:
    """A dataset: uint8 NHWC images (arrays, or ``--dataset=folder``'s cache read on demand), integer
    labels, and its metadata."""

    name: str
    num_classes: int
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    mean: tuple
    std: tuple
    class_names: list
    origin: str = ""  # where it was read from, for messages

    def validated(self) -> "Source":
        """Checks dtypes, shapes, counts and label range; returns a copy with int32 labels.

        Raises DataError (naming the dataset and its origin) before any training starts.
        """
        where = f"{self.name} ({self.origin})" if self.origin else self.name
        shapes, labels = {}, {}
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), np.asarray(getattr(self, f"y_{split}"))
            # An ndarray, or an array-like read from disk on demand (``cache.CachedImages``).
            if getattr(x, "dtype", None) != np.uint8 or not hasattr(x, "__getitem__"):
                raise DataError(f"{where}: {split} images must be uint8, got {getattr(x, 'dtype', type(x))}")
            if x.ndim != 4 or min(x.shape[1:]) < 1:
                raise DataError(f"{where}: {split} images must be NHWC, got shape {x.shape}")
            if y.ndim == 2 and y.shape[1] == 1:
                y = y[:, 0]
            if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
                raise DataError(f"{where}: {split} labels must be a 1-D integer array, got {y.dtype} {y.shape}")
            if len(x) != len(y):
                raise DataError(f"{where}: {len(x)} {split} images but {len(y)} {split} labels")
            if len(x) == 0:
                raise DataError(f"{where}: the {split} split is empty")
            lo, hi = int(y.min()), int(y.max())
            if lo < 0 or hi >= self.num_classes:
                raise DataError(
                    f"{where}: {split} labels span [{lo}, {hi}] but must lie in [0, {self.num_classes}) for "
                    f"{self.num_classes} classes; wrong dataset or corrupt labels"
                )
            shapes[split] = x.shape[1:]
            labels[split] = y.astype(np.int32)
        if shapes["train"] != shapes["test"]:
            raise DataError(f"{where}: train images are {shapes['train']} but test images are {shapes['test']}")
        channels = shapes["train"][-1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise DataError(f"{where}: mean/std have {len(self.mean)}/{len(self.std)} entries for {channels} channels")
        if len(self.class_names) != self.num_classes:
            raise DataError(f"{where}: {len(self.class_names)} class names for {self.num_classes} classes")
        broken = [str(c) for c in self.class_names if "\n" in str(c) or "\r" in str(c)]
        if broken:
            raise DataError(f"{where}: class name {broken[0]!r} holds a line break; the export stores one name a line")
        return dataclasses.replace(
            self,
            y_train=labels["train"],
            y_test=labels["test"],
            mean=tuple(float(m) for m in self.mean),
            std=tuple(float(s) for s in self.std),
            class_names=[str(c) for c in self.class_names],
        )


def error_summary(error: BaseException) -> str:
    """``Type: first line of the message``, to keep DataError messages on one line."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[tuple, tuple]:
    """Per-channel mean and std of uint8 NHWC ``images`` in [0, 1] pixel units, streamed in chunks.

    Float64 sums of ``x`` and ``x^2`` over chunks of ``chunk`` images (no float copy of the whole
    set); the population std (NumPy's ``ddof=0``), floored at 1e-3 so a constant channel cannot
    divide by zero.
    """
    channels = images.shape[-1]
    total, squares, count = np.zeros(channels), np.zeros(channels), 0
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].reshape(-1, channels).astype(np.float64) / 255.0
        total += x.sum(axis=0)
        squares += np.square(x).sum(axis=0)
        count += len(x)
    if count == 0:
        raise DataError("cannot compute mean/std of an empty training split")
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - np.square(mean), 0.0))
    return tuple(float(m) for m in mean), tuple(float(s) for s in np.maximum(std, 1e-3))
